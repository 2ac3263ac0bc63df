"""The shipped production front on loopback, slow attackers, and a device that times its rounds.

:func:`start_gunicorn` runs ``example_project`` with ``deploy/gunicorn.conf.py``
and :func:`start_nginx` runs Debian's nginx with ``deploy/nginx/starkeep.conf``
included as shipped, with only its listen port and its upstream address
rewritten (each rewrite must match exactly once, so a changed file fails the
test instead of quietly testing something else).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from starkeep_sync import HLCClock, SyncTransportError, create_sync_engine
from starkeep_sync.client import HttpObjectStorage, create_http_sync_transport
from starkeep_sync.client.session import create_session
from starkeep_sync.device.memory import MemoryDatabaseAdapter, MemoryObjectStorage
from tests.load.conftest import REPO, children_of, free_port

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
NGINX_CONF = REPO / "deploy" / "nginx" / "starkeep.conf"
GUNICORN_CONF = REPO / "deploy" / "gunicorn.conf.py"
DRIVE = "/apps/starkeep-drive"


def _stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def _wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise AssertionError(f"{url}: process exited with {process.returncode}:\n{tail(log)}")
        with contextlib.suppress(requests.RequestException):
            r = requests.get(f"{url}/health", timeout=5)
            if r.status_code == 200:
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"{url}/health did not answer in {timeout} s:\n{tail(log)}")
        time.sleep(0.25)  # /health is rate-limited per address: poll gently


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# -- gunicorn with the shipped settings ----------------------------------------------------------


@dataclass
class Gunicorn:
    process: subprocess.Popen[bytes]
    port: int
    log: Path
    access_log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def workers(self) -> list[int]:
        return children_of(self.process.pid)

    def stop(self) -> None:
        _stop(self.process)


def start_gunicorn(env: dict[str, str], tmp: Path) -> Gunicorn:
    """``gunicorn -c deploy/gunicorn.conf.py example_project.wsgi`` on a free loopback port."""
    port = free_port()
    log, access = tmp / "gunicorn.log", tmp / "gunicorn-access.log"
    env = {k: v for k, v in env.items() if k not in ("WEB_CONCURRENCY", "STARKEEP_WORKER_TIMEOUT", "STARKEEP_BIND")}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONF), "-b", f"127.0.0.1:{port}",
             "--access-logfile", str(access), "example_project.wsgi"],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    server = Gunicorn(process, port, log, access)
    try:
        _wait_healthy(server.url, process, log)
    except BaseException:
        server.stop()
        raise
    return server


# -- nginx with the shipped server block ---------------------------------------------------------


def render_shipped_conf(listen_port: int, upstream_port: int) -> str:
    """``deploy/nginx/starkeep.conf`` with only its listen port and upstream address replaced."""
    text = NGINX_CONF.read_text()
    for pattern, new in (
        (r"^(\s*)listen 80;", rf"\g<1>listen 127.0.0.1:{listen_port};"),
        (r"^(\s*)server 127\.0\.0\.1:8000;", rf"\g<1>server 127.0.0.1:{upstream_port};"),
    ):
        text, count = re.subn(pattern, new, text, flags=re.MULTILINE)
        assert count == 1, f"{NGINX_CONF}: expected one line matching {pattern!r}, found {count}"
    return text


@dataclass
class Nginx:
    process: subprocess.Popen[bytes]
    port: int
    prefix: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def error_log(self) -> Path:
        return self.prefix / "error.log"

    def stop(self) -> None:
        _stop(self.process)


def start_nginx(upstream_port: int, tmp: Path) -> Nginx:
    """``nginx -p tmp -c tmp/nginx.conf -g 'daemon off;'``: pid, logs and temp files all under ``tmp``."""
    assert os.access(NGINX, os.X_OK), f"nginx is not installed at {NGINX} (apt-get install -y nginx-light)"
    prefix = tmp / "nginx"
    prefix.mkdir()
    port = free_port()
    (prefix / "starkeep.conf").write_text(render_shipped_conf(port, upstream_port))
    temp_paths = "\n".join(
        f"    {name}_temp_path {prefix / name};" for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # As root, nginx's workers would otherwise run as nobody and could not use the temp paths.
    user = "user root root;" if os.geteuid() == 0 else ""
    (prefix / "nginx.conf").write_text(f"""{user}
worker_processes 1;
pid {prefix / "nginx.pid"};
error_log {prefix / "error.log"} info;
events {{ worker_connections 2048; }}
http {{
    access_log {prefix / "access.log"};
{temp_paths}
    include {prefix / "starkeep.conf"};
}}
""")
    log = prefix / "stderr.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [NGINX, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(prefix / "nginx.conf"),
             "-g", "daemon off;"],
            stdout=out, stderr=subprocess.STDOUT,
        )
    server = Nginx(process, port, prefix)
    try:
        _wait_healthy(server.url, process, server.error_log)
    except BaseException:
        server.stop()
        raise
    return server


# -- slow attackers --------------------------------------------------------------------------------


def attacker_address(i: int) -> str:
    """A distinct loopback source address per attacker connection (all of 127/8 is local on Linux),
    so a per-address limit does not stop them: the attack is a distributed one."""
    return f"127.0.{1 + i // 250}.{1 + i % 250}"


@dataclass
class _Slow:
    index: int
    kind: str
    sock: socket.socket | None = None
    sent: int = 0


@dataclass
class SlowAttack:
    """``headers`` connections that send a request line and then one header line a second, and
    ``bodies`` exchange POSTs (valid token, large Content-Length) whose body trickles a few bytes
    a second. A connection the server closes is opened again at once, so the pressure never drops.
    """

    port: int
    token: str
    headers: int = 50
    bodies: int = 50
    body_length: int = 1_000_000
    opened: int = 0
    closed_by_server: int = 0
    answers: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._conns = [_Slow(i, "header" if i < self.headers else "body") for i in range(self.headers + self.bodies)]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slow-attack", daemon=True)
        self._lock = threading.Lock()

    @property
    def addresses(self) -> set[str]:
        return {attacker_address(c.index) for c in self._conns}

    def start(self) -> None:
        for conn in self._conns:
            self._open(conn)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        for conn in self._conns:
            if conn.sock is not None:
                with contextlib.suppress(OSError):
                    conn.sock.close()
                conn.sock = None

    def open_now(self) -> int:
        with self._lock:
            return sum(c.sock is not None for c in self._conns)

    def _open(self, conn: _Slow) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(5)
        try:
            sock.bind((attacker_address(conn.index), 0))
            sock.connect(("127.0.0.1", self.port))
            if conn.kind == "header":
                sock.sendall(f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n".encode())
            else:
                sock.sendall((
                    f"POST {DRIVE}/sync/exchange HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
                    f"Authorization: Bearer {self.token}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {self.body_length}\r\n\r\n"
                    '{"watermarks":{},"limit":1,"pad":"'
                ).encode())
        except OSError:
            sock.close()
            return
        conn.sock, conn.sent = sock, 0
        self.opened += 1

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            with self._lock:
                for conn in self._conns:
                    if conn.sock is None or self._server_spoke(conn):
                        self._open(conn)
                        continue
                    piece = f"X-Slow-{conn.sent}: 1\r\n".encode() if conn.kind == "header" else b"xxxx"
                    try:
                        conn.sock.sendall(piece)
                        conn.sent += 1
                    except OSError:
                        self._drop(conn)
                        self._open(conn)

    def _server_spoke(self, conn: _Slow) -> bool:
        """True (and the connection dropped) if the server answered or closed it."""
        assert conn.sock is not None
        readable, _, _ = select.select([conn.sock], [], [], 0)
        if not readable:
            return False
        try:
            data = conn.sock.recv(4096)
        except OSError:
            data = b""
        status = data.split(b" ", 2)[1].decode(errors="replace") if data.startswith(b"HTTP/") else "closed"
        self.answers[f"{conn.kind} {status}"] = self.answers.get(f"{conn.kind} {status}", 0) + 1
        self.closed_by_server += 1
        self._drop(conn)
        return True

    def _drop(self, conn: _Slow) -> None:
        if conn.sock is not None:
            with contextlib.suppress(OSError):
                conn.sock.close()
        conn.sock = None


# -- a device timing its no-op rounds --------------------------------------------------------------


@dataclass
class Rounds:
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def p99(self) -> float:
        """Nearest-rank 99th percentile of the successful rounds, in seconds."""
        assert self.latencies, f"no round succeeded; errors: {self.errors[:5]}"
        ordered = sorted(self.latencies)
        return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]

    def summary(self) -> str:
        if not self.latencies:
            return f"0 rounds ok, {len(self.errors)} errors {self.errors[:3]}"
        p50 = sorted(self.latencies)[len(self.latencies) // 2]
        return (f"{len(self.latencies)} rounds ok, p50 {1000 * p50:.1f} ms, "
                f"p99 {1000 * self.p99:.1f} ms, max {1000 * max(self.latencies):.1f} ms, "
                f"{len(self.errors)} errors {self.errors[:3]}")


class Device:
    """A memory device on the Drive channel of ``url``, through the real HTTP client."""

    def __init__(self, url: str, token: str, *, timeout: tuple[float, float]) -> None:
        base = url + DRIVE
        # Connection failures are not retried: a round either gets its answer in time or is an error.
        self.session = create_session(retries=0)
        self.engine = create_sync_engine(
            local_database=MemoryDatabaseAdapter(), local_storage=MemoryObjectStorage(),
            remote_storage=HttpObjectStorage(base, auth=token, session=self.session, timeout=timeout),
            transport=create_http_sync_transport(base_url=base, auth=token, session=self.session, timeout=timeout),
            clock=HLCClock("slow-clients-device"),
        )

    def close(self) -> None:
        self.session.close()

    def run(self, seconds: float, interval: float) -> Rounds:
        """No-op rounds every ``interval`` seconds (or back to back when one takes longer)."""
        out = Rounds()
        end = time.monotonic() + seconds
        while (start := time.monotonic()) < end:
            try:
                result = self.engine.exchange()
                assert result.applied == 0 and result.shipped == 0, f"not a no-op round: {result}"
                out.latencies.append(time.monotonic() - start)
            except SyncTransportError as err:
                out.errors.append(f"{err.status or err.code}: {err}"[:200])
            time.sleep(max(0.0, start + interval - time.monotonic()))
        return out
