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
