"""What a user installing the package relies on: one version, a license, a changelog, stated support, test tiers."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

import starkeep_sync

ROOT = Path(__file__).resolve().parent.parent
DIST_NAME = "django-starkeep-sync"

# Nothing here opens a database connection: the PostgreSQL pass need not run it again.
pytestmark = pytest.mark.nodb


@pytest.fixture(scope="module")
def project() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def classifier_versions(project: dict[str, Any], prefix: str) -> set[str]:
    """The ``X.Y`` versions listed by classifiers ``<prefix> :: X.Y``."""
    found = set()
    for classifier in project["project"]["classifiers"]:
        match = re.fullmatch(re.escape(prefix) + r" :: (\d+\.\d+)", classifier)
        if match:
            found.add(match.group(1))
    return found


def test_installed_version_is_the_package_version() -> None:
    assert importlib.metadata.version(DIST_NAME) == starkeep_sync.__version__


def test_version_is_written_only_in_the_package(project: dict[str, Any]) -> None:
    meta = project["project"]
    assert "version" not in meta, "pyproject.toml must not repeat the version"
    assert "version" in meta["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "starkeep_sync.__version__"}
    # setuptools reads the attribute without importing the package (which would need Django's
    # dependencies at build time) only when it is a plain string assignment at module level.
    tree = ast.parse((ROOT / "starkeep_sync" / "__init__.py").read_text())
    literals = [
        node.value.value for node in tree.body
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["__version__"]
        and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
    ]
    assert literals == [starkeep_sync.__version__]
    assert re.fullmatch(r"\d+\.\d+\.\d+(?:(?:a|b|rc)\d+)?(?:\.dev\d+)?", starkeep_sync.__version__)


def test_license_file_and_metadata(project: dict[str, Any]) -> None:
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License")
    assert "Copyright (c) 2026 the starkeep_sync authors" in text
    assert project["project"]["license"] == "MIT"  # an SPDX expression, not the deprecated table
    assert project["project"]["license-files"] == ["LICENSE"]


def test_changelog_has_an_entry_for_this_version_or_unreleased_changes() -> None:
    text = (ROOT / "CHANGELOG.md").read_text()
    headings = re.findall(r"^## \[([^\]]+)\]", text, flags=re.MULTILINE)
    assert headings, "CHANGELOG.md has no '## [version]' sections"
    assert "Unreleased" in headings or starkeep_sync.__version__ in headings
    assert headings[0] == "Unreleased" or headings[0] == starkeep_sync.__version__, "newest entry first"


def test_stated_python_support_matches_requires_python_and_nox(project: dict[str, Any]) -> None:
    import noxfile

    pythons = classifier_versions(project, "Programming Language :: Python")
    assert pythons == {"3.11", "3.12", "3.13"}
    assert project["project"]["requires-python"] == ">=" + min(pythons, key=lambda v: tuple(map(int, v.split("."))))
    tested = {p for ps in noxfile.DJANGO_PYTHONS.values() for p in ps}
    assert tested == pythons


def test_stated_django_support_matches_the_dependency_floor_and_nox(project: dict[str, Any]) -> None:
    import noxfile

    djangos = classifier_versions(project, "Framework :: Django")
    assert djangos == set(noxfile.DJANGO_PYTHONS) == {"5.2", "6.0"}
    floors = noxfile.declared_minimums()
    assert floors["django"] == "5.2"
    # Django 6.0 dropped Python 3.10 and 3.11.
    assert noxfile.DJANGO_PYTHONS["6.0"] == ("3.12", "3.13")


def test_oldest_session_pins_every_runtime_dependency(project: dict[str, Any]) -> None:
    import noxfile

    floors = noxfile.declared_minimums()
    runtime = {re.split(r"[\[<>=!~ ]", spec, maxsplit=1)[0].lower() for spec in project["project"]["dependencies"]}
    assert runtime <= set(floors)
    assert floors["djangorestframework"] == "3.15" and floors["django-storages"] == "1.14"


def collect(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )


def collected_ids(out: str) -> list[str]:
    return [line for line in out.splitlines() if "::" in line]


def test_services_tests_are_left_out_unless_m_names_them() -> None:
    plain = collect("tests/load")
    assert plain.returncode == 5, plain.stdout[-2000:]  # nothing to run is an error, never a silent pass
    assert collected_ids(plain.stdout) == []
    assert "deselected" in plain.stdout
    assert "need PostgreSQL and Redis" in plain.stdout and "-m services" in plain.stdout

    only = collect("-m", "services", "tests/load")
    assert only.returncode == 0, only.stdout[-2000:] + only.stderr[-2000:]
    ids = collected_ids(only.stdout)
    assert ids and all(i.startswith("tests/load/") for i in ids)

    tier2 = collect("-m", "services or not nodb", "tests/load", "tests/core/test_hlc.py")
    assert collected_ids(tier2.stdout) == ids  # the core is nodb: only the services tests remain

    excluded = collect("-m", "not services", "tests/load")
    assert excluded.returncode == 5 and collected_ids(excluded.stdout) == []
    assert "need PostgreSQL and Redis" not in excluded.stdout  # the user asked for it: no hint


def test_other_marker_expressions_keep_services_out() -> None:
    out = collect("-m", "not nodb", "tests/load", "tests/test_packaging.py")
    assert out.returncode == 5, out.stdout[-2000:]
    assert collected_ids(out.stdout) == []  # test_packaging is nodb; the load tests are left out
