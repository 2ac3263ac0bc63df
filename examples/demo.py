"""Start the example server on SQLite + file-system storage and show devices syncing with it.

    python examples/demo.py            # keeps serving on http://127.0.0.1:8000 afterwards
    python examples/demo.py --exit     # stop once the demo sync is shown

It migrates the example database, creates a user and a device token, starts
``manage.py runserver`` (on another free port if the one asked for is busy),
then runs two plain-Python devices: the first adds three photos and pushes
them, the second (empty) pulls them down with their blobs, and a third round
shows everything converged.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEVICE = ROOT / "examples" / "device.py"
HOST = "127.0.0.1"


class DemoError(Exception):
    """A step of the demo failed; the message says which, and never carries the token."""


def manage(*args: str, env: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "manage.py"), *args], env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise DemoError(f"manage.py {args[0]} failed (exit {done.returncode}):\n{done.stderr.strip()[-2000:]}")
    return done.stdout.strip()


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def is_our_health(body: bytes) -> bool:
    """Whether ``/health`` answered with starkeep_sync's shape, ``{"status": "ok", "db": true, "storage": true}``."""
    try:
        data = json.loads(body)
    except ValueError:
        return False
    return isinstance(data, dict) and data.get("status") == "ok" and data.get("db") is True \
        and data.get("storage") is True


def wait_healthy(url: str, server: subprocess.Popen[bytes], log: Path, seconds: float = 30) -> None:
    """Until the server we started answers ``/health`` as starkeep_sync does; fail if it exits first."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            # Another process took the port in between, or the server could not start: its log says which.
            raise DemoError(f"the server exited with code {server.returncode} before it answered; see {log}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                if resp.status == 200 and is_our_health(resp.read(4096)):
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise DemoError(f"the server at {url} did not become healthy in {seconds:.0f} s; see {log}")


def run_device(args: list[str], token: str, what: str) -> None:
    # The token goes in the environment: an argument would show in process lists and in error messages.
    done = subprocess.run([sys.executable, str(DEVICE), *args], env={**os.environ, "STARKEEP_SYNC_TOKEN": token})
    if done.returncode != 0:
        raise DemoError(f"the {what} device failed (exit {done.returncode}); its output is above")


def device_command(url: str, token: str) -> str:
    """The command a user can paste from here to sync one more device with this server."""
    shown = os.path.relpath(DEVICE)
    shown = shown if not shown.startswith("..") else str(DEVICE)
    return shlex.join(["python", shown, "--url", url, "--token", token, "--db", "mine.db", "--add", "1"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000, help="port for the example server (loopback only)")
    parser.add_argument("--exit", action="store_true", help="stop the server after the demo")
    parser.add_argument("--workdir", default=None, help="where the demo devices keep their files")
    args = parser.parse_args(argv)
    # Our lines and the devices' (children writing to the same stdout) must come out in order.
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    try:
        return demo(args)
    except DemoError as err:
        print(f"demo failed: {err}", file=sys.stderr)
        return 1


def demo(args: argparse.Namespace) -> int:
    port = args.port
    if not port_is_free(port):
        port = free_port()
        print(f"== port {args.port} is busy (another server?); using port {port} instead")
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "example_project.settings", "PYTHONPATH": str(ROOT)}
    print("== migrating the example database (SQLite) ...")
    manage("migrate", "--noinput", env=env)
    token = manage("starkeep_token", "create", "--user", "demo", "--create-user", "--name", "demo devices", env=env)
    # The demo's own throwaway user on a loopback-only server: the whole token is shown so it can be used.
    print(f"== created user 'demo' and a device token (shown once): {token}")

    url = f"http://{HOST}:{port}"
    work = Path(args.workdir or tempfile.mkdtemp(prefix="starkeep-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    log_path = work / "server.log"
    with open(log_path, "ab") as log:
        server = subprocess.Popen([sys.executable, str(ROOT / "manage.py"), "runserver", "--noreload",
                                   f"{HOST}:{port}"], env=env, stdout=log, stderr=log)
        try:
            wait_healthy(url, server, log_path)
            print(f"== server is up at {url} (its log: {log_path})")
            print("== phone adds 3 photos and syncs:")
            run_device(["--url", url, "--db", str(work / "phone.db"), "--add", "3"], token, "phone")
            print("== laptop (empty) syncs and receives them with their blobs:")
            run_device(["--url", url, "--db", str(work / "laptop.db")], token, "laptop")
            print("== phone syncs again: nothing left to move:")
            run_device(["--url", url, "--db", str(work / "phone.db")], token, "phone")
            print(f"== done. Device files are in {work}.")
            if args.exit:
                return 0
            print(f"== the server keeps running at {url} (Ctrl-C to stop); try:\n   {device_command(url, token)}")
            server.wait()
        except KeyboardInterrupt:
            pass
        finally:
            server.terminate()
            server.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
