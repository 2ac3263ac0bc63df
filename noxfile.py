"""The supported Python and Django versions, tested at both ends.

``nox`` (no arguments) runs the two sessions CI runs:

- ``oldest``: Python 3.11 with every runtime dependency pinned exactly to the
  lowest version ``pyproject.toml`` declares (Django 5.2.0, DRF 3.15.0,
  django-storages 1.14, requests 2.31.0, msgspec 0.18.6, drf-spectacular 0.27.0);
- ``newest``: Python 3.13 with the latest Django 6.0.x and the latest DRF.

``nox -s matrix`` runs every supported Python x Django pair (latest patch
releases). Each session runs the protocol core, the adapter contract suite,
the Django app and the scenario catalogue on SQLite; the heavy tiers that start their own servers
(``tests/load``, ``tests/s3``, the fuzzing and benchmark runs) are left to the
main test commands. Interpreters are looked up on PATH as ``python3.11`` and so
on; a missing one fails the session rather than skipping it.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import nox

nox.options.default_venv_backend = "venv"
nox.options.error_on_missing_interpreters = True
nox.options.sessions = ["oldest", "newest"]
nox.options.reuse_existing_virtualenvs = False

ROOT = Path(__file__).resolve().parent
TEST_PATHS = ("tests/core", "tests/conformance", "tests/django", "tests/scenarios")
PYTEST_ARGS = ("-q", "-p", "no:cacheprovider", *TEST_PATHS)
#: What the tests import beyond the runtime dependencies: the whole ``test`` extra, so a new test
#: module's imports (boto3, schemathesis, ...) are there without editing this file.
WITH_TESTS = ".[test]"
#: Optional runtime dependencies pinned in ``oldest`` too: the OpenAPI schema is served by the app itself.
OPTIONAL = ("drf-spectacular",)
#: Django releases this package supports, and the Pythons each one runs on.
DJANGO_PYTHONS = {"5.2": ("3.11", "3.12", "3.13"), "6.0": ("3.12", "3.13")}


def declared_minimums() -> dict[str, str]:
    """``{distribution name: lowest version}`` of the runtime dependencies and ``OPTIONAL``, from pyproject.toml.

    Read from the file so that raising a floor there moves the ``oldest`` pins too.
    """
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        specs.extend(s for s in extra if re.split(r"[\[<>=!~ ]", s, maxsplit=1)[0] in OPTIONAL)
    minimums: dict[str, str] = {}
    for spec in specs:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?\s*>=\s*([0-9][0-9A-Za-z.]*)(?:\s*,.*)?", spec.strip())
        if match is None:
            raise ValueError(f"pyproject.toml dependency {spec!r} has no '>=' floor to pin the oldest session to")
        minimums[match.group(1).lower()] = match.group(2)
    return minimums


def run_tests(session: nox.Session) -> None:
    session.run("python", "-c", "import django, rest_framework, sys; "
                "print('python', sys.version.split()[0], 'django', django.__version__, "
                "'drf', rest_framework.__version__)")
    # SQLite whatever the caller's environment says: this tier needs no services.
    session.run("python", "-m", "pytest", *PYTEST_ARGS, *session.posargs,
                env={"STARKEEP_TEST_DATABASE_URL": ""})


@nox.session(python="3.11")
def oldest(session: nox.Session) -> None:
    """Python 3.11 and the lowest declared version of every runtime dependency, pinned exactly."""
    pins = [f"{name}=={version}" for name, version in sorted(declared_minimums().items())]
    session.install(WITH_TESTS, *pins)
    run_tests(session)


@nox.session(python="3.13")
def newest(session: nox.Session) -> None:
    """Python 3.13, the latest Django 6.0.x and the latest of everything else."""
    session.install("--upgrade", WITH_TESTS, "django>=6.0,<6.1")
    run_tests(session)


@nox.session
@nox.parametrize(
    ("python", "django"),
    [(python, django) for django, pythons in DJANGO_PYTHONS.items() for python in pythons],
)
def matrix(session: nox.Session, django: str) -> None:
    """One supported Python x Django pair, latest patch releases."""
    major, minor = django.split(".")
    session.install(WITH_TESTS, f"django>={django},<{major}.{int(minor) + 1}")
    run_tests(session)
