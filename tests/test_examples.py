"""The plain-Python device example and the one-command demo actually sync."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from starkeep_sync.adapters import DjangoObjectStorage, OrmDatabaseAdapter
from tests.factories import make_token, make_user

ROOT = Path(__file__).resolve().parent.parent


def run_device(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "examples" / "device.py"), *args],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


@pytest.mark.django_db(transaction=True)
def test_device_example_pushes_and_a_second_device_pulls(live_server: Any, tmp_path: Path) -> None:
    owner = make_user("devices")
    token = make_token(owner)
    first = run_device("--url", live_server.url, "--token", token, "--db", str(tmp_path / "a.db"), "--add", "2")
    assert first.returncode == 0, first.stderr
    assert "shipped 2" in first.stdout
    records = OrmDatabaseAdapter(owner).all()
    assert len(records) == 2
    assert all(DjangoObjectStorage(owner).has(r.object_storage_key) for r in records)
    second = run_device("--url", live_server.url, "--token", token, "--db", str(tmp_path / "b.db"))
    assert second.returncode == 0, second.stderr
    assert "received 2" in second.stdout and "2 records held" in second.stdout
    blobs = [p for p in (tmp_path / "b.db-blobs").rglob("*") if p.is_file() and "." not in p.name]
    assert len(blobs) == 2


@pytest.mark.django_db(transaction=True)
def test_device_example_watch_receives_another_devices_push_at_once(live_server: Any, tmp_path: Path,
                                                                     settings: Any) -> None:
    """``--watch`` polls every 30 s, so only the live change feed can bring A's push within seconds."""
    import queue
    import time

    # The server holds a long-poll 2 s at most: the one in flight when the device stops ends soon after.
    settings.STARKEEP_SYNC = {**settings.STARKEEP_SYNC, "LIVE_MAX_TIMEOUT": 2}
    token = make_token(make_user("watcher"))
    watcher = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "device.py"), "--url", live_server.url, "--token", token,
         "--db", str(tmp_path / "b.db"), "--watch", "--interval", "30"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    lines: queue.Queue[str] = queue.Queue()
    assert watcher.stdout is not None
    threading.Thread(target=lambda: [lines.put(line) for line in watcher.stdout], daemon=True).start()  # type: ignore[union-attr]
    try:
        assert "watching" in lines.get(timeout=30)
        pushed = run_device("--url", live_server.url, "--token", token, "--db", str(tmp_path / "a.db"), "--add", "1")
        assert pushed.returncode == 0, pushed.stderr
        deadline, seen = time.monotonic() + 10, ""
        while "received 1" not in seen:
            seen += lines.get(timeout=max(0.01, deadline - time.monotonic()))
        assert "1 records held" in seen, seen
    finally:
        watcher.send_signal(signal.SIGINT)
        try:
            watcher.wait(10)
        except subprocess.TimeoutExpired:
            watcher.kill()


def test_device_example_needs_a_token(tmp_path: Path) -> None:
    env_token = os.environ.pop("STARKEEP_SYNC_TOKEN", None)
    try:
        done = run_device("--url", "http://127.0.0.1:9", "--db", str(tmp_path / "x.db"))
    finally:
        if env_token is not None:
            os.environ["STARKEEP_SYNC_TOKEN"] = env_token
    assert done.returncode == 2 and "no token" in done.stderr


def test_demo_command_starts_the_server_and_shows_a_sync(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
           "STARKEEP_MEDIA": str(tmp_path / "media")}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "demo.py"), "--exit", "--port", str(port),
                           "--workdir", str(tmp_path / "work")],
                          capture_output=True, text=True, timeout=180, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith("py-phone: 1 round(s), shipped 3") for line in lines)
    assert any(line.startswith("py-laptop:") and "received 3" in line for line in lines)
    assert sum(line.startswith("py-phone") and "shipped 0, received 0" in line for line in lines) == 1


class _Impostor(BaseHTTPRequestHandler):
    """Another service on the port: answers every GET as our /health would, so only the port check tells."""

    def do_GET(self) -> None:
        self.server.hits.append(self.path)  # type: ignore[attr-defined]
        body = json.dumps({"status": "ok", "db": True, "storage": True}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def busy_port() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Impostor)
    server.hits = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def demo_env(tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
           "STARKEEP_MEDIA": str(tmp_path / "media")}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env.pop("STARKEEP_SYNC_TOKEN", None)
    return env


def test_demo_moves_off_a_busy_port_and_prints_a_token_that_works(
        tmp_path: Path, busy_port: ThreadingHTTPServer) -> None:
    port = busy_port.server_address[1]
    demo = subprocess.Popen([sys.executable, str(ROOT / "examples" / "demo.py"), "--port", str(port),
                             "--workdir", str(tmp_path / "work")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=demo_env(tmp_path),
                            cwd=tmp_path)
    lines: list[str] = []
    try:
        assert demo.stdout is not None
        timer = threading.Timer(180, demo.kill)  # a hung demo fails the test instead of blocking it
        timer.start()
        for line in demo.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("   python "):
                break
        timer.cancel()
        output = "\n".join(lines)
        assert lines and lines[-1].startswith("   python "), output
        assert f"port {port} is busy" in output and "Traceback" not in output
        token = next(line for line in lines if "device token" in line).rsplit(" ", 1)[1]
        assert token.startswith("skt_") and "…" not in token
        command = shlex.split(lines[-1])
        assert command[command.index("--token") + 1] == token
        url = command[command.index("--url") + 1]
        assert url != f"http://127.0.0.1:{port}"
        # The suggested command, run as printed (from the directory the demo ran in), syncs with the token.
        done = subprocess.run([sys.executable, *command[1:]], capture_output=True, text=True, timeout=120,
                              cwd=tmp_path, env=demo_env(tmp_path))
        assert done.returncode == 0, done.stdout + done.stderr
        assert "shipped 1" in done.stdout and "4 records held" in done.stdout
        assert busy_port.hits == []  # type: ignore[attr-defined]  # the demo never took the impostor for its server
    finally:
        demo.send_signal(signal.SIGINT)
        try:
            demo.wait(30)
        finally:
            if demo.poll() is None:
                demo.kill()


def test_device_failure_is_one_line_without_the_token(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    token = "skt_this-must-never-be-printed"
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "device.py"), "--url", f"http://127.0.0.1:{dead}",
                           "--db", str(tmp_path / "x.db")], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "STARKEEP_SYNC_TOKEN": token})
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and token not in done.stdout + done.stderr
    assert "sync with" in done.stderr and "failed" in done.stderr and "cannot reach" in done.stderr


def test_example_project_prints_500_tracebacks_with_debug_off(tmp_path: Path) -> None:
    """With DEBUG=0 Django mails 500s to ADMINS only; the example project also prints them (not disconnects)."""
    script = """
import django
django.setup()
from django.test import Client
from django.urls import path
import example_project.urls as urls

def boom(request):
    raise RuntimeError("example failure 1234")

def gone(request):
    raise ConnectionResetError(104, "client went away 5678")

urls.urlpatterns.insert(0, path("boom", boom))
urls.urlpatterns.insert(0, path("gone", gone))
client = Client(raise_request_exception=False)
print("status", client.get("/boom").status_code, client.get("/gone").status_code)
"""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "example_project.settings", "DJANGO_DEBUG": "0",
           "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}", "STARKEEP_MEDIA": str(tmp_path / "media"),
           "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert "status 500 500" in done.stdout, done.stderr[-2000:]
    assert "RuntimeError: example failure 1234" in done.stderr
    assert "5678" not in done.stderr  # a client that went away is not a server fault to print
