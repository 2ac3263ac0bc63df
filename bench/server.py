"""A fresh database, the example project migrated on it, and gunicorn serving it on loopback."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.machine import ROOT

PG_DSN = os.environ.get("BENCH_PG_DSN", "host=127.0.0.1 port=5432 user=postgres")
PG_URL = os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
PAGE_LIMIT = 10_000  # the server's MAX_PAGE_LIMIT (and MAX_ITEMS_PER_REQUEST)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Database:
    """One fresh database per run: a SQLite file, or PostgreSQL ``starkeep_bench_<pid>``."""

    def __init__(self, kind: str, workdir: Path) -> None:
        self.kind = kind
        if kind == "sqlite":
            self.path = workdir / "server.sqlite3"
            self.url = f"sqlite:///{self.path}"
            self.name = str(self.path)
        elif kind == "postgres":
            self.name = f"starkeep_bench_{os.getpid()}"
            self.url = f"{PG_URL}/{self.name}"
        else:
            raise ValueError(f"unknown database {kind!r} (sqlite or postgres)")
        self.placeholder = "?" if kind == "sqlite" else "%s"

    def create(self) -> None:
        if self.kind == "postgres":
            import psycopg

            with psycopg.connect(f"{PG_DSN} dbname=postgres", autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
                conn.execute(f'CREATE DATABASE "{self.name}"')

    def drop(self) -> None:
        if self.kind == "postgres":
            import psycopg

            with psycopg.connect(f"{PG_DSN} dbname=postgres", autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        elif self.path.exists():
            self.path.unlink()

    def connect(self) -> Any:
        """A raw DB-API connection to the same database (for baselines)."""
        if self.kind == "sqlite":
            return sqlite3.connect(str(self.path), timeout=30)
        import psycopg

        return psycopg.connect(f"{PG_DSN} dbname={self.name}")

    def version(self) -> str:
        if self.kind == "sqlite":
            return f"SQLite {sqlite3.sqlite_version}"
        with self.connect() as conn:
            row = conn.execute("SHOW server_version").fetchone()
        return f"PostgreSQL {row[0] if row else '?'}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``gunicorn example_project.wsgi`` on a fresh database, throttling off.

    ``app="example_project.asgi", worker_class="uvicorn_worker.UvicornWorker"`` serves it under ASGI;
    ``extra_env`` adds to the server's environment.
    """

    def __init__(self, db: Database, workdir: Path, workers: int, *, app: str = "example_project.wsgi",
                 worker_class: str | None = None, extra_env: dict[str, str] | None = None) -> None:
        self.db = db
        self.workdir = workdir
        self.workers = workers
        self.app = app
        self.worker_class = worker_class
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"gunicorn-{db.kind}-{self.port}.log"
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "example_project.settings",
            "PYTHONPATH": str(ROOT),
            "DATABASE_URL": db.url,
            "STARKEEP_MEDIA": str(workdir / f"media-{db.kind}"),
            "DJANGO_DEBUG": "0",
            "STARKEEP_THROTTLE": "off",
            "STARKEEP_MAX_PAGE_LIMIT": str(PAGE_LIMIT),
            "STARKEEP_LOG_LEVEL": "WARNING",
        }
        if db.kind == "postgres":
            self.env["REDIS_URL"] = REDIS_URL
        else:
            self.env.pop("REDIS_URL", None)
        self.env.update(extra_env or {})

    def provision(self, owners: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Migrate (``manage.py migrate``), register the app, issue a token per owner."""
        self._run([sys.executable, str(ROOT / "manage.py"), "migrate", "--noinput", "-v", "0"])
        out = self._run([sys.executable, "-m", "bench.provision", *owners])
        return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]

    def _run(self, cmd: list[str]) -> str:
        done = subprocess.run(cmd, env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[1:3])} failed:\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def start(self) -> None:
        log_file = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", self.app, "-w", str(self.workers),
             *(["-k", self.worker_class] if self.worker_class else []),
             "-b", f"127.0.0.1:{self.port}", "--timeout", "600", "--graceful-timeout", "10",
             # gunicorn's control socket defaults to one path in $HOME, shared by every gunicorn here.
             "--no-control-socket"],
            env=self.env, cwd=ROOT, stdout=log_file, stderr=log_file,
        )
        log_file.close()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=5) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"gunicorn did not answer /health in 90 s:\n{self.log_tail()}")

    def worker_pids(self) -> list[int]:
        """gunicorn's workers: the master's live children, from /proc."""
        assert self.proc is not None
        out = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        stat = f.read()
                except OSError:
                    continue
                fields = stat[stat.rfind(")") + 2:].split()
                if int(fields[1]) == self.proc.pid and fields[0] != "Z":
                    out.append(int(entry))
        return sorted(out)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
