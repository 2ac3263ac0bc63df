"""The example project's routes less ``sync/changes``: a server like the reference, which has no change feed."""

from django.urls import include, path

from starkeep_sync import urls as sync_urls

without = [p for p in sync_urls.urlpatterns if not str(getattr(p, "name", "")).startswith("changes")]

urlpatterns = [path("", include((without, "starkeep_sync")))]
