"""An active credential always carries a secret (or a token hash).

Runs after 0003 revoked the rows that did not, so it applies to any existing
database. ``editable=False`` keeps the generated values out of every model form.
"""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("starkeep_sync", "0003_revoke_empty_credentials"),
    ]

    operations = [
        migrations.AlterField(
            model_name="appsecret",
            name="key_id",
            field=models.CharField(editable=False, max_length=64, unique=True),
        ),
        migrations.AlterField(
            model_name="appsecret",
            name="secret",
            field=models.CharField(editable=False, max_length=128),
        ),
        migrations.AlterField(
            model_name="devicetoken",
            name="hint",
            field=models.CharField(editable=False, max_length=16),
        ),
        migrations.AlterField(
            model_name="devicetoken",
            name="token_hash",
            field=models.CharField(editable=False, max_length=64, unique=True),
        ),
        migrations.AddConstraint(
            model_name="appsecret",
            constraint=models.CheckConstraint(
                condition=models.Q(revoked_at__isnull=False) | ~models.Q(secret=""),
                name="starkeep_secret_active_nonempty",
            ),
        ),
        migrations.AddConstraint(
            model_name="devicetoken",
            constraint=models.CheckConstraint(
                condition=models.Q(revoked_at__isnull=False) | ~models.Q(token_hash=""),
                name="starkeep_token_active_has_hash",
            ),
        ),
    ]
