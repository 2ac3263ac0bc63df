"""The protocol core imports without Django, DRF or the Django layer.

Every core module is imported in a fresh interpreter in which those packages
cannot be imported at all: a core module that reaches for one fails here,
whether or not Django happens to be installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: The pure-Python protocol core and the device side (PROTOCOL's requester and responder, no Django).
CORE_MODULES = [
    "starkeep_sync", "starkeep_sync.approws", "starkeep_sync.blobs", "starkeep_sync.channel",
    "starkeep_sync.constants", "starkeep_sync.engine", "starkeep_sync.exceptions", "starkeep_sync.hlc",
    "starkeep_sync.keys", "starkeep_sync.memory", "starkeep_sync.notifier", "starkeep_sync.paging",
    "starkeep_sync.protocols", "starkeep_sync.records", "starkeep_sync.residency", "starkeep_sync.responder",
    "starkeep_sync.sqlite", "starkeep_sync.state", "starkeep_sync.supervisor", "starkeep_sync.ulid",
    "starkeep_sync.watermarks", "starkeep_sync.wire", "starkeep_sync.client", "starkeep_sync.client.auth",
    "starkeep_sync.client.session", "starkeep_sync.client.storage", "starkeep_sync.client.transport",
]

#: What the core must never import: Django, DRF, and our own Django layer.
FORBIDDEN = ["django", "rest_framework", "storages", "starkeep_sync.models", "starkeep_sync.adapters",
             "starkeep_sync.api", "starkeep_sync.conf", "starkeep_sync.server", "starkeep_sync.signals",
             "starkeep_sync.admin", "starkeep_sync.syncing", "starkeep_sync.management"]

SCRIPT = """
import importlib, importlib.abc, sys
forbidden = {forbidden!r}

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == f or name.startswith(f + ".") for f in forbidden):
            raise ImportError(f"core module imported {{name}}")
        return None

sys.meta_path.insert(0, Refuse())
importlib.import_module({module!r})
print("CLEAN")
"""


@pytest.mark.parametrize("module", CORE_MODULES)
def test_core_module_imports_without_django(module: str) -> None:
    env = dict(os.environ)
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(forbidden=FORBIDDEN, module=module)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0 and "CLEAN" in proc.stdout, proc.stdout + proc.stderr[-2000:]


def test_the_list_names_every_core_module() -> None:
    """A new module at the top level is either in the core list or knowingly in the Django layer."""
    django_layer = {"admin", "apps", "checks", "conf", "server", "signals", "syncing", "urls"}
    top = {p.stem for p in (ROOT / "starkeep_sync").glob("*.py") if p.stem != "__init__"}
    listed = {m.rsplit(".", 1)[-1] for m in CORE_MODULES if m.count(".") == 1} - {"client"}  # a package
    assert top - django_layer == listed
