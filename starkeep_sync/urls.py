"""Routes of PROTOCOL §4 and §7, for the Drive channel and per-app channels.

Mount with ``path("", include("starkeep_sync.urls"))`` so that
``<server>/apps/starkeep-drive/sync/exchange`` answers as TypeScript devices expect.
"""

from django.urls import path, re_path

from .api import views
from .api.changes import ChangesView
from .api.schema import SchemaView

app_name = "starkeep_sync"

APP = r"apps/(?P<app_id>[A-Za-z0-9._-]{1,255})/"


# A key is any text (the views refuse bad keys with a JSON 400); "." would not
# match a newline and leave a key holding one to Django's HTML 404.
KEY = r"(?P<key>[\s\S]+)"


def _channel_routes(prefix: str, suffix: str) -> list:
    return [
        re_path(rf"^{prefix}sync/exchange$", views.ExchangeView.as_view(), name=f"exchange{suffix}"),
        re_path(rf"^{prefix}sync/changes$", ChangesView.as_view(), name=f"changes{suffix}"),
        re_path(rf"^{prefix}files/presign$", views.PresignPutView.as_view(), name=f"presign{suffix}"),
        re_path(rf"^{prefix}files/confirm$", views.ConfirmView.as_view(), name=f"confirm{suffix}"),
        re_path(rf"^{prefix}files/{KEY}/presign$", views.PresignGetView.as_view(),
                name=f"presign-get{suffix}"),
        re_path(rf"^{prefix}files/{KEY}$", views.FileView.as_view(), name=f"file{suffix}"),
    ]


urlpatterns = [
    path("health", views.HealthView.as_view(), name="health"),
    # OpenAPI 3 JSON of these routes; 404 with our error body without the "openapi" extra.
    path("schema", SchemaView.as_view(), name="schema"),
    re_path(rf"^{APP}health$", views.HealthView.as_view(), name="app-health"),
    path("files-direct/<str:token>", views.DirectBlobView.as_view(), name="direct"),
    *_channel_routes("", ""),
    *_channel_routes(APP, "-app"),
    # Last: a bad app id, an empty key or token, an unknown sub-route under our prefixes gets
    # our JSON 404 rather than the project's HTML page.
    re_path(r"^(?:apps|files|files-direct)(?:/|$)", views.NoRouteView.as_view(), name="no-route"),
]
