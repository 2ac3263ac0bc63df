from django.apps import AppConfig


class StarkeepSyncConfig(AppConfig):
    name = "starkeep_sync"
    verbose_name = "Starkeep sync"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)
