"""Revoke the active credentials an earlier admin could save without a secret.

The admin's add forms stored an active ``AppSecret`` with an empty ``secret``
(anyone can compute an HMAC over the empty key) and an active ``DeviceToken``
with an empty ``token_hash``. Such rows are revoked, not deleted, so the
operator can still see who had them.
"""

from __future__ import annotations

from typing import Any

from django.db import migrations
from django.utils import timezone


def revoke_empty_credentials(apps: Any, schema_editor: Any) -> None:
    alias = schema_editor.connection.alias
    now = timezone.now()
    token_model = apps.get_model("starkeep_sync", "DeviceToken")
    secret_model = apps.get_model("starkeep_sync", "AppSecret")
    token_model.objects.using(alias).filter(revoked_at__isnull=True, token_hash="").update(revoked_at=now)
    secret_model.objects.using(alias).filter(revoked_at__isnull=True, secret="").update(revoked_at=now)


class Migration(migrations.Migration):
    dependencies = [
        ("starkeep_sync", "0002_serverclock"),
    ]

    operations = [
        # Nothing to undo: a revoked row stays revoked.
        migrations.RunPython(revoke_empty_credentials, migrations.RunPython.noop),
    ]
