import os

from django.core.wsgi import get_wsgi_application
from django.urls import get_resolver

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")
application = get_wsgi_application()
# Import the URLconf (and with it the views, DRF and the schema module) now, in
# each worker as it starts, rather than in the first request it serves.
get_resolver().url_patterns  # noqa: B018
