"""Run inside the server's environment: register the bench app and issue one token per owner.

    python -m bench.provision OWNER [OWNER ...]

Runs the project's own management commands (``starkeep_app register``,
``starkeep_token create --create-user``) through ``call_command`` in one
process, so Django starts once rather than once per owner. Prints one JSON
object ``{owner: {"token": ..., "id": ...}}`` on stdout.
"""

from __future__ import annotations

import io
import json
import os
import sys


def main(owners: list[str]) -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    call_command("starkeep_app", "register", "bench", "--table", "items:id", stdout=io.StringIO())
    out: dict[str, dict[str, object]] = {}
    model = get_user_model()
    for owner in owners:
        buf = io.StringIO()
        call_command("starkeep_token", "create", "--user", owner, "--create-user", "--name", "bench", stdout=buf)
        token = buf.getvalue().strip().splitlines()[-1]
        user = model.objects.get(**{model.USERNAME_FIELD: owner})
        out[owner] = {"token": token, "id": user.pk}
    sys.stdout.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
