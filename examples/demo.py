"""Start the example server on SQLite + file-system storage and show devices syncing with it.

    python examples/demo.py            # keeps serving on http://127.0.0.1:8000 afterwards
    python examples/demo.py --exit     # stop once the demo sync is shown

It migrates the example database, creates a user and a device token, starts
``manage.py runserver``, then runs two plain-Python devices: the first adds
three photos and pushes them, the second (empty) pulls them down with their
blobs, and a third round shows everything converged.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def manage(*args: str, env: dict[str, str]) -> str:
    return subprocess.run([sys.executable, str(ROOT / "manage.py"), *args], env=env, check=True,
                          capture_output=True, text=True).stdout.strip()


def wait_healthy(url: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"the server at {url} did not become healthy in {seconds:.0f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000, help="port for the example server (loopback only)")
    parser.add_argument("--exit", action="store_true", help="stop the server after the demo")
    parser.add_argument("--workdir", default=None, help="where the demo devices keep their files")
    args = parser.parse_args(argv)

    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "example_project.settings", "PYTHONPATH": str(ROOT)}
    print("== migrating the example database (SQLite) ...")
    manage("migrate", "--noinput", env=env)
    token = manage("starkeep_token", "create", "--user", "demo", "--create-user", "--name", "demo devices", env=env)
    print("== created user 'demo' and a device token (shown once): " + token[:10] + "…")

    url = f"http://127.0.0.1:{args.port}"
    work = Path(args.workdir or tempfile.mkdtemp(prefix="starkeep-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    log = open(work / "server.log", "ab")
    server = subprocess.Popen([sys.executable, str(ROOT / "manage.py"), "runserver", "--noreload",
                               f"127.0.0.1:{args.port}"], env=env, stdout=log, stderr=log)
    try:
        wait_healthy(url)
        print(f"== server is up at {url} (its log: {work / 'server.log'})")
        device = [sys.executable, str(ROOT / "examples" / "device.py"), "--url", url, "--token", token]
        print("== phone adds 3 photos and syncs:")
        subprocess.run([*device, "--db", str(work / "phone.db"), "--add", "3"], check=True)
        print("== laptop (empty) syncs and receives them with their blobs:")
        subprocess.run([*device, "--db", str(work / "laptop.db")], check=True)
        print("== phone syncs again: nothing left to move:")
        subprocess.run([*device, "--db", str(work / "phone.db")], check=True)
        print(f"== done. Device files are in {work}.")
        if args.exit:
            return 0
        print(f"== the server keeps running at {url} (Ctrl-C to stop); try:\n"
              f"   python examples/device.py --url {url} --token <token> --db mine.db --add 1")
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.terminate()
        server.wait(10)
        log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
