from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    # Mounted at the root so <server>/apps/starkeep-drive/sync/exchange answers.
    path("", include("starkeep_sync.urls")),
]
