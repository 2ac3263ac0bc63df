"""ASGI entry point: the live change feed (``GET sync/changes``) waits without holding a thread.

``starkeep_sync.live.get_asgi_application`` is Django's, except that a change-feed
request does not get a thread of its own for Django's synchronous steps.

    gunicorn example_project.asgi -k uvicorn_worker.UvicornWorker -w 4

Sync views (the exchange, the blob routes) run in a thread per request, as
Django does under ASGI; see the README's *Live changes* section for what that
costs and for serving exchanges from WSGI workers beside it.
"""

import gc
import os

# Read by example_project/settings.py: under ASGI each request's sync code runs in a thread of its
# own, so a persistent connection would be left behind by every request (Django's advice: CONN_MAX_AGE=0).
os.environ.setdefault("STARKEEP_SERVER_INTERFACE", "asgi")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")

from django.urls import get_resolver

from starkeep_sync.live import get_asgi_application

application = get_asgi_application()
# As in wsgi.py: load the URLconf and views now, then keep the collector off what lives as long as the worker.
get_resolver().url_patterns  # noqa: B018
gc.freeze()
gc.set_threshold(int(os.environ.get("STARKEEP_GC_THRESHOLD", "10000")), 10, 10)
