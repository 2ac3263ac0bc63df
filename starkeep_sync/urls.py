"""Routes of PROTOCOL §4 and §7, for the Drive channel and per-app channels.

Mount with ``path("", include("starkeep_sync.urls"))`` so that
``<server>/apps/starkeep-drive/sync/exchange`` answers as TypeScript devices expect.
"""

from django.urls import path, re_path

from .api import views

app_name = "starkeep_sync"

APP = r"apps/(?P<app_id>[A-Za-z0-9._-]{1,255})/"


# A key is any text (the views refuse bad keys with a JSON 400); "." would not
# match a newline and leave a key holding one to Django's HTML 404.
KEY = r"(?P<key>[\s\S]+)"


def _channel_routes(prefix: str, suffix: str) -> list:
    return [
        re_path(rf"^{prefix}sync/exchange$", views.ExchangeView.as_view(), name=f"exchange{suffix}"),
        re_path(rf"^{prefix}files/presign$", views.PresignPutView.as_view(), name=f"presign{suffix}"),
        re_path(rf"^{prefix}files/confirm$", views.ConfirmView.as_view(), name=f"confirm{suffix}"),
        re_path(rf"^{prefix}files/{KEY}/presign$", views.PresignGetView.as_view(),
                name=f"presign-get{suffix}"),
        re_path(rf"^{prefix}files/{KEY}$", views.FileView.as_view(), name=f"file{suffix}"),
    ]


urlpatterns = [
    path("health", views.HealthView.as_view(), name="health"),
    re_path(rf"^{APP}health$", views.HealthView.as_view(), name="app-health"),
    path("files-direct/<str:token>", views.DirectBlobView.as_view(), name="direct"),
    *_channel_routes("", ""),
    *_channel_routes(APP, "-app"),
]
