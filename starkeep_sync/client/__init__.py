"""HTTP client of the Starkeep sync protocol, built on ``requests``.

Part of the pure-Python core: it never imports Django, so a device or a
script can sync against any Starkeep server (ours or the TypeScript one).
"""

from .auth import AppSignatureAuth, BearerAuth, CallableAuth, NoAuth, RequestAuth, resolve_auth
from .session import create_session
from .storage import HttpObjectStorage
from .transport import HttpSyncTransport, create_http_sync_transport

__all__ = [
    "AppSignatureAuth",
    "BearerAuth",
    "CallableAuth",
    "HttpObjectStorage",
    "HttpSyncTransport",
    "NoAuth",
    "RequestAuth",
    "create_http_sync_transport",
    "create_session",
    "resolve_auth",
]
