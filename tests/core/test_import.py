"""The protocol core imports without Django."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import sys
import starkeep_sync
import starkeep_sync.memory, starkeep_sync.engine, starkeep_sync.responder
assert starkeep_sync.HLCClock is not None
leaked = sorted(m for m in sys.modules if m == "django" or m.startswith("django."))
print("LEAKED" if leaked else "CLEAN", leaked)
sys.exit(1 if leaked else 0)
"""


def test_core_import_does_not_pull_in_django() -> None:
    env = dict(os.environ)
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "CLEAN" in proc.stdout
