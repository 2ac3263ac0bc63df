import gc
import os

from django.core.wsgi import get_wsgi_application
from django.urls import get_resolver

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")
application = get_wsgi_application()
# Import the URLconf (and with it the views, DRF and the schema module) now, in
# each worker as it starts, rather than in the first request it serves.
get_resolver().url_patterns  # noqa: B018
# Everything loaded so far lives as long as the worker. Moving it out of the
# collector's generations spares each full collection a walk over it: a page of
# 10,000 records allocates enough to set one off, and that walk was a fifth of
# the page's cost.
gc.freeze()
# A request builds tens of thousands of objects (a page's parsed JSON, records,
# items), nearly all freed by reference counting; at the default threshold (700)
# the collector ran some 14 times a 1,000-record push and re-walked its survivors
# (about 6 ms). Collecting every 10,000 allocations keeps cyclic garbage bounded
# and costs a push about 2 ms less. STARKEEP_GC_THRESHOLD=700 restores the default.
gc.set_threshold(int(os.environ.get("STARKEEP_GC_THRESHOLD", "10000")), 10, 10)
