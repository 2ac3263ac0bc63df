"""Rate limits per owner (or per client address for unauthenticated routes), one scope per route family."""

from __future__ import annotations

from typing import Any

from rest_framework.throttling import SimpleRateThrottle

from ..conf import sync_settings
from .authentication import Principal


class SyncRateThrottle(SimpleRateThrottle):
    """Rates come from ``STARKEEP_SYNC['THROTTLE_RATES'][scope]``, read when a request arrives
    (never frozen at import), so ``override_settings`` and redeploys take effect."""

    scope = "exchange"

    def __init__(self) -> None:
        # SimpleRateThrottle reads its rate in __init__; do the same from our settings.
        self.rate = self.get_rate()
        self.num_requests, self.duration = self.parse_rate(self.rate)

    def get_rate(self) -> str | None:
        return sync_settings.THROTTLE_RATES.get(self.scope)

    def get_cache_key(self, request: Any, view: Any) -> str | None:
        if isinstance(request.auth, Principal):
            ident = f"owner-{request.auth.owner.pk}"
        else:
            ident = f"addr-{self.get_ident(request)}"
        return f"starkeep_sync:throttle:{self.scope}:{ident}"


class ExchangeRateThrottle(SyncRateThrottle):
    scope = "exchange"


class FilesRateThrottle(SyncRateThrottle):
    scope = "files"


class HealthRateThrottle(SyncRateThrottle):
    scope = "health"


class ChangesRateThrottle(SyncRateThrottle):
    """The live change feed has its own budget: a device long-polls beside its exchanges."""

    scope = "changes"
