"""``python -m bench.profile``: one workload with the server stack in this process, under pyinstrument.

The HTTP client's ``requests`` session is mounted on Django's WSGI handler, so
a profile shows the device and the whole server path (auth, views, responder,
ORM, storage) in one tree without sockets or worker processes in between.
Needs ``pyinstrument`` (``pip install pyinstrument``); not part of the suite.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict


class WSGIAdapter(BaseAdapter):
    """A ``requests`` adapter that hands each request to a WSGI app in this process."""

    def __init__(self, app: Any) -> None:
        super().__init__()
        self.app = app

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        url = urlsplit(request.url or "")
        body: Any = request.body or b""
        if isinstance(body, str):
            body = body.encode()
        elif hasattr(body, "read"):
            body = body.read()
        elif not isinstance(body, bytes):
            body = b"".join(body)  # a streamed upload: an iterable of blocks
        environ = {
            "REQUEST_METHOD": request.method, "PATH_INFO": url.path, "QUERY_STRING": url.query,
            "SERVER_NAME": url.hostname or "testserver", "SERVER_PORT": str(url.port or 80),
            "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": url.scheme or "http", "wsgi.input": io.BytesIO(body),
            "wsgi.errors": sys.stderr, "wsgi.multithread": False, "wsgi.multiprocess": False,
            "wsgi.run_once": False, "wsgi.version": (1, 0), "CONTENT_LENGTH": str(len(body)),
        }
        for name, value in request.headers.items():
            key = name.upper().replace("-", "_")
            if key == "CONTENT_TYPE":
                environ["CONTENT_TYPE"] = value
            elif key != "CONTENT_LENGTH":
                environ[f"HTTP_{key}"] = value
        captured: dict[str, Any] = {}

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
            captured["status"], captured["headers"] = status, headers

        chunks = self.app(environ, start_response)
        try:
            content = b"".join(chunks)
        finally:
            if hasattr(chunks, "close"):
                chunks.close()
        response = requests.Response()
        response.status_code = int(captured["status"].split()[0])
        response.headers = CaseInsensitiveDict(captured["headers"])
        response.headers.setdefault("Content-Length", str(len(content)))
        response._content = content
        response.raw = io.BytesIO(content)
        response.url = request.url or ""
        response.request = request
        return response

    def close(self) -> None:
        pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("workload", choices=["push", "pull", "noop", "app-push", "app-pull"])
    parser.add_argument("-n", type=int, default=10_000, help="records, rows or blobs (default 10,000)")
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="postgres")
    parser.add_argument("--page", type=int, default=1000, help="page_limit of the device")
    parser.add_argument("--html", default=None, help="also write the profile as HTML here")
    parser.add_argument("--no-profile", action="store_true", help="only time it")
    args = parser.parse_args(argv)

    from bench.server import PAGE_LIMIT, Database

    workdir = tempfile.mkdtemp(prefix="starkeep-profile-")
    db = Database(args.db, Path(workdir))
    db.create()
    os.environ.update({
        "DJANGO_SETTINGS_MODULE": "example_project.settings", "DATABASE_URL": db.url,
        "STARKEEP_MEDIA": os.path.join(workdir, "media"), "DJANGO_DEBUG": "0", "STARKEEP_THROTTLE": "off",
        "STARKEEP_MAX_PAGE_LIMIT": str(PAGE_LIMIT), "STARKEEP_LOG_LEVEL": "WARNING",
    })
    import django

    django.setup()
    from django.core.management import call_command
    from django.core.wsgi import get_wsgi_application

    call_command("migrate", verbosity=0)
    creds = _provision("prof")
    session = requests.Session()
    session.mount("http://", WSGIAdapter(get_wsgi_application()))
    try:
        run = _prepare(args, creds, session)
        profiler = None
        if not args.no_profile:
            from pyinstrument import Profiler

            profiler = Profiler(interval=0.0005)
            profiler.start()
        started = time.perf_counter()
        moved = run()
        elapsed = time.perf_counter() - started
        if profiler is not None:
            profiler.stop()
            print(profiler.output_text(unicode=True, color=False, show_all=bool(os.environ.get("PROFILE_ALL"))))
            if args.html:
                with open(args.html, "w") as f:
                    f.write(profiler.output_html())
        print(f"{args.workload} on {args.db}: {moved:,} in {elapsed:.3f} s = {moved / elapsed:,.0f}/s")
    finally:
        from django.db import connections

        connections.close_all()
        db.drop()


def _provision(owner: str) -> dict[str, Any]:
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    call_command("starkeep_app", "register", "bench", "--table", "items:id", stdout=io.StringIO())
    user = get_user_model().objects.create(username=owner)
    from starkeep_sync.models import DeviceToken

    return {"token": DeviceToken.issue(user, name="profile")[1], "id": user.pk}


def _prepare(args: argparse.Namespace, creds: dict[str, Any], session: requests.Session) -> Any:
    """Set up devices and data (untimed); return the timed step, which returns how much it moved."""
    from bench.data import APP_ID, NAMESPACE, app_rows, metadata_records
    from bench.workloads import DRIVE, MAX_ROUNDS
    from starkeep_sync import HLCClock, create_sync_engine
    from starkeep_sync.client import HttpObjectStorage, create_http_sync_transport
    from starkeep_sync.device.memory import MemoryAppSource, MemoryDatabaseAdapter, MemoryObjectStorage
    from starkeep_sync.device.supervisor import sync_until_done

    token = creds["token"]
    app = args.workload.startswith("app-")
    channel = APP_ID if app else DRIVE
    base = f"http://testserver/apps/{channel}"

    def device(node: str, n: int) -> Any:
        clock = HLCClock(node)
        source = None
        database = None
        if app:
            source = MemoryAppSource()
            source.namespaces.register(NAMESPACE)
            app_rows(clock, source, n)
        else:
            database = MemoryDatabaseAdapter(metadata_records(clock, n))
        return create_sync_engine(
            local_database=database, local_storage=MemoryObjectStorage(),
            remote_storage=HttpObjectStorage(base, auth=token, session=session),
            transport=create_http_sync_transport(base_url=base, auth=token, session=session),
            clock=clock, app_source=source, sync_shared_records=not app, app_id=APP_ID if app else None,
            page_limit=args.page)

    def rounds(engine: Any) -> int:
        return sum(r.applied + r.shipped for r in sync_until_done(engine, max_rounds=MAX_ROUNDS))

    if args.workload in ("push", "app-push"):
        pusher = device("dev-a", args.n)
        return lambda: rounds(pusher)
    seeder = device("dev-a", args.n)
    rounds(seeder)
    if args.workload == "noop":
        def noop() -> int:
            for _ in range(20):
                seeder.exchange()
            return 20
        return noop
    puller = device("dev-b", 0)
    return lambda: rounds(puller)


if __name__ == "__main__":
    main()
