"""The example server in a process of its own, so its memory can be measured from /proc.

``runserver --noreload`` keeps the server in the one process it starts (no
autoreloader child), serving each request on a thread; its peak resident set
is ``VmHWM`` in ``/proc/<pid>/status``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_status_kib(pid: int, field: str) -> int:
    """A ``kB`` field of ``/proc/<pid>/status`` (``VmHWM`` peak RSS, ``VmRSS`` current)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"/proc/{pid}/status has no {field}")


@dataclass
class ServerProcess:
    url: str
    token: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def peak_rss(self) -> int:
        """Peak resident set of the server process so far, in bytes."""
        return proc_status_kib(self.pid, "VmHWM") * 1024

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-5000:]


def _manage(args: list[str], env: Mapping[str, str]) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "manage.py"), *args], cwd=ROOT, env=dict(env),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"manage.py {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@contextmanager
def running_server(workdir: Path, *, settings: str = "example_project.settings",
                   extra_env: Mapping[str, str] | None = None, user: str = "big") -> Iterator[ServerProcess]:
    """Migrate a fresh SQLite database, issue a token for ``user``, serve on 127.0.0.1."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": settings,
        "DATABASE_URL": f"sqlite:///{workdir / 'db.sqlite3'}",
        "STARKEEP_MEDIA": str(workdir / "media"),
        "DJANGO_DEBUG": "0",
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1",
        "TMPDIR": str(workdir),  # the server's upload spool, on the same file system as the media
        "PYTHONUNBUFFERED": "1",
        **(extra_env or {}),
    }
    _manage(["migrate", "--noinput"], env)
    token = _manage(["starkeep_token", "create", "--user", user, "--create-user"], env).strip()
    assert token and "\n" not in token, token
    port = free_port()
    log = workdir / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), "runserver", "--noreload", f"127.0.0.1:{port}"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    server = ServerProcess(f"http://127.0.0.1:{port}", token, process, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, f"the server exited with {process.returncode}:\n{server.output()}"
            try:
                if requests.get(f"{server.url}/health", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, f"the server did not answer /health in 60 s:\n{server.output()}"
            time.sleep(0.2)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)
