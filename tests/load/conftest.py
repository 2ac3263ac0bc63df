"""The load fixture: a real deployment on loopback.

One PostgreSQL database per test session, migrated with ``manage.py``, a Redis
cache key prefix of its own, and ``gunicorn -w 4`` serving ``example_project``
on a free port. Redis is shared with whatever else uses it: the session deletes
only the keys under its prefix (SCAN + DEL), never a whole database.
Every test talks to it over HTTP only (devices), or reads the database
directly (to compare the server's rows with the devices').

PostgreSQL and Redis are required: these tests are marked ``services``
(tests/conftest.py) and run only when ``-m`` names that marker; when either
service is unreachable the session fails loudly instead of skipping.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
PG_DSN = "host=127.0.0.1 port=5432 user=postgres"
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/0"
WORKERS = 4
#: The owners tests use besides ``load`` (one each, so their data never mixes), created up front.
OWNERS = ("faults-proxy", "faults-blobs", "faults-kill", "faults-crash", "cut-upload", "batches", "same-blob")
STARTUP_SECONDS = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scratch_dir(prefix: str) -> Path:
    """A directory in RAM where there is one: thousands of small files are slow on disk."""
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


def children_of(pid: int) -> list[int]:
    """Live direct children of ``pid`` (gunicorn's workers), from /proc."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may contain spaces, so split after the last ')'.
        fields = stat[stat.rfind(")") + 2:].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(entry))
    return sorted(out)


@dataclass
class LoadServer:
    """The running deployment, and helpers to drive and inspect it."""

    url: str
    port: int
    env: dict[str, str]
    db_name: str
    tmp: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    token: str = ""
    users: dict[str, str] = field(default_factory=dict)

    # -- management commands ----------------------------------------------------

    def manage(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=REPO, env=self.env, capture_output=True,
            text=True, timeout=timeout,
        )
        if proc.returncode != 0:
            pytest.fail(f"manage.py {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    def new_owner(self, username: str) -> str:
        """A user with a device token; the token (each test gets its own owner)."""
        if username not in self.users:
            self.create_owners([username])
        return self.users[username]

    def create_owners(self, usernames: list[str]) -> None:
        """``manage.py starkeep_token create --create-user`` for each, in parallel (each run starts Django)."""
        procs = {
            name: subprocess.Popen(
                [sys.executable, "manage.py", "starkeep_token", "create", "--user", name, "--create-user"],
                cwd=REPO, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
            for name in usernames
        }
        for name, proc in procs.items():
            out, err = proc.communicate(timeout=120)
            if proc.returncode != 0:
                pytest.fail(f"starkeep_token create --user {name} failed ({proc.returncode}):\n{out}\n{err}")
            token = out.strip()
            assert token and "\n" not in token, token
            self.users[name] = token

    def app_secret(self, app_id: str, username: str) -> tuple[str, str]:
        """``(secret, key id)`` of a new app-signature secret."""
        proc = self.manage("starkeep_app", "secret", app_id, "--user", username)
        secret = proc.stdout.strip()
        key_id = proc.stderr.strip().rsplit("key id:", 1)[-1].strip()
        assert secret and key_id, (proc.stdout, proc.stderr)
        return secret, key_id

    # -- processes ------------------------------------------------------------------

    @property
    def master_pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def worker_pids(self) -> list[int]:
        return children_of(self.master_pid)

    def wait_workers(self, count: int = WORKERS, timeout: float = 30) -> list[int]:
        """Wait until gunicorn has ``count`` live workers again and answers /health."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None and self.process.poll() is None, (
                f"gunicorn master exited:\n{self.log_tail()}")
            pids = self.worker_pids()
            if len(pids) >= count and self.healthy():
                return pids
            time.sleep(0.3)
        raise AssertionError(f"gunicorn did not get back to {count} workers:\n{self.log_tail()}")

    def healthy(self) -> bool:
        try:
            r = requests.get(f"{self.url}/health", timeout=5)
        except requests.RequestException:
            return False
        return r.status_code == 200 and r.json().get("status") == "ok"

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    @property
    def access_log(self) -> Path:
        return self.tmp / "access.log"

    def mark(self) -> tuple[int, int]:
        """Where the access log and the server log end now; pass it to :meth:`server_errors`."""
        sizes = []
        for path in (self.access_log, self.log_path):
            try:
                sizes.append(path.stat().st_size)
            except OSError:
                sizes.append(0)
        return sizes[0], sizes[1]

    def server_errors(self, since: tuple[int, int] = (0, 0)) -> list[str]:
        """Requests gunicorn answered with a 5xx, and tracebacks it logged, after ``since``.

        Only the server's own answers: the fault proxy's injected 500s never reach it.
        """
        def read(path: Path, offset: int) -> list[str]:
            try:
                with open(path, "rb") as f:
                    f.seek(offset)
                    return f.read().decode(errors="replace").splitlines()
            except OSError:
                return []

        bad = [line for line in read(self.access_log, since[0]) if re.search(r'" 5\d\d ', line)]
        return bad + [line for line in read(self.log_path, since[1]) if "Traceback" in line or "Error" in line]

    # -- the server's rows, read straight from PostgreSQL ------------------------------

    def connect(self) -> Any:
        import psycopg

        return psycopg.connect(f"{PG_DSN} dbname={self.db_name}", autocommit=True)

    def owner_state(self, username: str, app_id: str = "notes") -> dict[str, dict[str, Any]]:
        """Every shared record, AW row and AR row of one owner, keyed by id, as the devices hold them."""
        from starkeep_sync import DataRecord, deserialize_hlc

        state: dict[str, dict[str, Any]] = {"sr": {}, "aw": {}, "ar": {}}
        dupes: list[str] = []
        with self.connect() as conn:
            (owner_id,) = conn.execute("SELECT id FROM auth_user WHERE username = %s", (username,)).fetchone()
            for row in conn.execute(
                "SELECT record_id, kind, type, created_at, updated_at, deleted_at, version, content_hash, "
                "object_storage_key, mime_type, size_bytes, original_filename, origin_app_id, parent_id, "
                "label, node_id FROM starkeep_sync_sharedrecord WHERE owner_id = %s", (owner_id,),
            ):
                rid = row[0]
                if rid in state["sr"]:
                    dupes.append(f"sr {rid}")
                assert row[15] == deserialize_hlc(row[4]).node_id, f"node_id column disagrees for {rid}"
                state["sr"][rid] = DataRecord(
                    id=rid, kind=row[1], type=row[2], created_at=deserialize_hlc(row[3]),
                    updated_at=deserialize_hlc(row[4]),
                    deleted_at=deserialize_hlc(row[5]) if row[5] else None, version=row[6],
                    content_hash=row[7], object_storage_key=row[8], mime_type=row[9], size_bytes=row[10],
                    original_filename=row[11], origin_app_id=row[12], parent_id=row[13], label=row[14],
                )
            for row_key, data, updated_at, deleted_at, node_id in conn.execute(
                'SELECT row_key, data, updated_at, deleted_at, node_id FROM starkeep_sync_approw '
                'WHERE owner_id = %s AND app_id = %s AND "table" = %s', (owner_id, app_id, "notes"),
            ):
                rid = json.loads(row_key)[0]
                if rid in state["aw"]:
                    dupes.append(f"aw {rid}")
                data = data if isinstance(data, dict) else json.loads(data)
                state["aw"][rid] = {**data, "updated_at": updated_at, "deleted_at": deleted_at,
                                    "node_id": node_id}
            for row in conn.execute(
                "SELECT record_id, object_storage_key, content_hash, mime_type, size_bytes, original_filename, "
                "origin_app_id, created_at, updated_at, deleted_at, node_id, extra "
                "FROM starkeep_sync_filerecord WHERE owner_id = %s AND app_id = %s", (owner_id, app_id),
            ):
                rid = row[0]
                if rid in state["ar"]:
                    dupes.append(f"ar {rid}")
                extra = row[11] if isinstance(row[11], dict) else json.loads(row[11] or "{}")
                state["ar"][rid] = {
                    **extra, "id": rid, "object_storage_key": row[1], "content_hash": row[2],
                    "mime_type": row[3], "size_bytes": row[4], "original_filename": row[5],
                    "origin_app_id": row[6], "created_at": row[7], "updated_at": row[8],
                    "deleted_at": row[9], "node_id": row[10],
                }
        assert not dupes, f"duplicate rows on the server: {dupes}"
        return state


def _require_services() -> None:
    try:
        import psycopg

        with psycopg.connect(f"{PG_DSN} dbname=postgres connect_timeout=5"):
            pass
    except Exception as err:
        pytest.fail(f"PostgreSQL is required for tests/load and is not reachable at 127.0.0.1:5432: {err}",
                    pytrace=False)
    try:
        import redis

        redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_timeout=5).ping()
    except Exception as err:
        pytest.fail(f"Redis is required for tests/load and is not reachable at 127.0.0.1:6379: {err}",
                    pytrace=False)


def cache_keys(r: Any, prefix: str) -> list[bytes]:
    """Every Redis key of the example server's cache under ``prefix`` (Django writes ``<prefix>:<version>:<key>``)."""
    return list(r.scan_iter(match=f"{prefix}:*", count=1000))


def delete_cache_keys(r: Any, prefix: str) -> None:
    """Delete this session's keys, and only them: the Redis database may hold anyone's data."""
    for _ in range(3):  # keys whose TTL lapses mid-scan are simply gone; a few passes settle it
        keys = cache_keys(r, prefix)
        if not keys:
            return
        for start in range(0, len(keys), 500):
            r.delete(*keys[start:start + 500])
    left = cache_keys(r, prefix)
    assert not left, f"{len(left)} Redis keys under {prefix!r} survived the cleanup"


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)  # graceful: workers finish, master exits
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@contextmanager
def deployment(app: str = "example_project.wsgi", worker_class: str | None = None,
               extra_env: dict[str, str] | None = None) -> Iterator[LoadServer]:
    """gunicorn -w 4 serving ``app`` on PostgreSQL + Redis, with the ``notes`` app and a ``load`` user registered.

    ``worker_class``: e.g. ``uvicorn_worker.UvicornWorker`` for ``example_project.asgi``.
    """
    _require_services()
    import psycopg
    import redis

    pid = os.getpid()
    db_name = f"starkeep_load_{pid}_{secrets.token_hex(3)}"
    # Letters, digits and dashes only: the prefix goes into a SCAN pattern unescaped.
    cache_prefix = f"starkeep-load-{pid}-{secrets.token_hex(4)}"
    tmp = scratch_dir("starkeep-load-")
    r = redis.Redis.from_url(REDIS_URL)
    with psycopg.connect(f"{PG_DSN} dbname=postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db_name}"')
        conn.execute(f'CREATE DATABASE "{db_name}"')
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{db_name}",
        "REDIS_URL": REDIS_URL,
        "STARKEEP_CACHE_KEY_PREFIX": cache_prefix,
        "STARKEEP_MEDIA": str(tmp / "media"),
        "DJANGO_DEBUG": "0",
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
        "DJANGO_SETTINGS_MODULE": "example_project.settings",
        "STARKEEP_LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
        **(extra_env or {}),
    }
    port = free_port()
    log_path = tmp / "gunicorn.log"
    process: subprocess.Popen[bytes] | None = None
    try:
        server = LoadServer(f"http://127.0.0.1:{port}", port, env, db_name, tmp, log_path)
        server.manage("migrate", "--noinput", timeout=300)
        server.manage("starkeep_app", "register", "notes", "--table", "notes:id",
                      "--table", "_starkeep_sync_records:id")
        server.create_owners(["load", *OWNERS])
        server.token = server.users["load"]
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", app, "-w", str(WORKERS),
                 *(["-k", worker_class] if worker_class else []),
                 "-b", f"127.0.0.1:{port}", "--graceful-timeout", "5",
                 # Every request's status, so a test can tell real 5xx from injected ones.
                 "--access-logfile", str(server.access_log)],
                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
            )
        server.process = process
        deadline = time.monotonic() + STARTUP_SECONDS
        while not server.healthy():
            if process.poll() is not None:
                pytest.fail(f"gunicorn exited with {process.returncode}:\n{server.log_tail()}", pytrace=False)
            if time.monotonic() > deadline:
                pytest.fail(f"gunicorn did not answer /health in {STARTUP_SECONDS} s:\n{server.log_tail()}",
                            pytrace=False)
            time.sleep(0.25)  # /health is rate-limited per address: poll gently
        server.wait_workers()
        # /health is throttled through the cache: its counters must already sit under the prefix,
        # or the cleanup below would leave the server's keys behind.
        if not cache_keys(r, cache_prefix):
            pytest.fail(f"the example server wrote no cache keys under {cache_prefix!r}: "
                        "is STARKEEP_CACHE_KEY_PREFIX read by example_project/settings.py?", pytrace=False)
        yield server
    finally:
        if process is not None:
            _stop(process)
        with psycopg.connect(f"{PG_DSN} dbname=postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        shutil.rmtree(tmp, ignore_errors=True)
        delete_cache_keys(r, cache_prefix)  # last: a failure here must not leave the database behind
        r.close()


@pytest.fixture(scope="session")
def load_server() -> Iterator[LoadServer]:
    """gunicorn -w 4 (sync workers) on PostgreSQL + Redis, with the ``notes`` app and a ``load`` user registered."""
    with deployment() as server:
        yield server


@pytest.fixture
def device_dir() -> Iterator[Path]:
    """Scratch space for one test's devices (sqlite files and blob folders)."""
    path = scratch_dir("starkeep-devices-")
    yield path
    shutil.rmtree(path, ignore_errors=True)
