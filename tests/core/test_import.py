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

#: The pure-Python layers: the protocol core, the device side and the HTTP client, module by module.
PURE_PACKAGES = ("core", "device", "client")
CORE_MODULES = ["starkeep_sync", *sorted(
    f"starkeep_sync.{pkg}" + ("" if p.stem == "__init__" else f".{p.stem}")
    for pkg in PURE_PACKAGES for p in (ROOT / "starkeep_sync" / pkg).glob("*.py")
)]

#: What the core must never import: Django, DRF, and our own Django layer.
FORBIDDEN = ["django", "rest_framework", "storages", "starkeep_sync.models", "starkeep_sync.adapters",
             "starkeep_sync.api", "starkeep_sync.conf", "starkeep_sync.server", "starkeep_sync.signals",
             "starkeep_sync.admin", "starkeep_sync.management"]

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


def test_the_top_level_holds_only_the_django_layer() -> None:
    """The architecture shows in the layout: pure Python in core/, device/ and client/, Django around them."""
    django_layer = {"admin", "apps", "checks", "conf", "live", "server", "signals", "urls"}
    top = {p.stem for p in (ROOT / "starkeep_sync").glob("*.py") if p.stem != "__init__"}
    assert top == django_layer
    assert len(CORE_MODULES) > 25
