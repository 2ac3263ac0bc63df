"""Schemathesis against the live server: no 5xx, and every answer as the OpenAPI schema says.

The schema is the one the server serves at ``/schema`` (read through Django's test
client at collection: building it needs no database), so the fuzzing checks the
server against its own published description. Each operation runs schemathesis'
examples, coverage (boundary and negative cases) and fuzzing phases against
pytest-django's ``live_server``, once with a device token and once with Starkeep
app signatures (computed over the exact bytes sent, by a ``requests`` auth hook), as
a fresh owner, with the app "notes" registered.

Checks: no 5xx; every status, content type and body as documented; and every
request the schema calls invalid is refused with a 4xx (``negative_data_rejection``).
``STARKEEP_FUZZ_EXAMPLES`` raises the examples per operation (default 25, which keeps the
file under a minute) for a deeper exploration.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any
from urllib.parse import unquote

import pytest

schemathesis = pytest.importorskip("schemathesis")
pytest.importorskip("drf_spectacular")

import requests  # noqa: E402
from django.test import Client  # noqa: E402
from django.urls import reverse  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from starkeep_sync.client.auth import AppSignatureAuth  # noqa: E402
from starkeep_sync.core.constants import DRIVE_APP_ID  # noqa: E402
from tests.factories import make_secret, make_token, make_user, register_app  # noqa: E402

EXAMPLES = int(os.environ.get("STARKEEP_FUZZ_EXAMPLES", "25"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    response_schema_conformance,
    content_type_conformance,
    negative_data_rejection,
]

# schemathesis.pytest.from_fixture("...") would load it from the live server at run time, but its
# lazy loader breaks on pytest 9.2 (it sets Node._nodeid, gone there); the served JSON is the same document.
DOCUMENT = json.loads(Client().get(reverse("starkeep_sync:schema")).content)
schema = schemathesis.openapi.from_dict(DOCUMENT)
# The signed run leaves out the coverage phase (its boundary cases are the token run's, and they
# are most of the time): signatures only change authentication, which must hold for any body.
signed_schema = schemathesis.openapi.from_dict(DOCUMENT)
signed_schema.config.phases.update(phases=["examples", "fuzzing"])
for _schema in (schema, signed_schema):
    # Requests authenticate through the fixtures below: no values generated for the credential headers.
    _schema.config.generation.update(with_security_parameters=False)

_APP_PATH = re.compile(r"^/apps/([^/]+)(/.*)$")
_APP_ID = re.compile(r"[A-Za-z0-9._-]{1,255}")  # what the app-id route accepts; the rest is a 404 unsigned


class SignEachRequest(requests.auth.AuthBase):
    """Signs the request as sent: its method, its percent-decoded path relative to ``/apps/<id>``, its body.

    The app id is the path's (the Drive channel for un-prefixed routes); an app without a
    secret of this owner is signed with a made-up secret, which the server must refuse with 401.
    """

    def __init__(self, secrets: dict[str, str]) -> None:
        self.secrets = secrets

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        path = unquote((request.path_url or "/").split("?", 1)[0])
        match = _APP_PATH.match(path)
        app_id, relative = (match.group(1), match.group(2)) if match else (DRIVE_APP_ID, path)
        if not _APP_ID.fullmatch(app_id):
            return request  # no route takes this app id (a header could not even carry some): unsigned
        body = request.body or b""
        if isinstance(body, str):
            body = body.encode()
        signer = AppSignatureAuth(app_id, self.secrets.get(app_id, "not-a-secret-of-this-server"))
        request.headers.update(signer.headers(request.method or "GET", relative, body))
        return request


def _owner() -> Any:
    owner = make_user("fuzzer")
    register_app("notes", {"notes": ["id"]}, files=True)
    return owner


@pytest.fixture
def token_session(transactional_db: None) -> Any:
    with requests.Session() as http:
        http.headers["Authorization"] = f"Bearer {make_token(_owner())}"
        yield http


@pytest.fixture
def signing_session(transactional_db: None) -> Any:
    owner = _owner()
    with requests.Session() as http:
        http.auth = SignEachRequest({app: make_secret(owner, app).secret for app in ("notes", DRIVE_APP_ID)})
        yield http


@pytest.mark.django_db(transaction=True)
@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_with_a_token(case: Any, live_server: Any, token_session: requests.Session) -> None:
    case.call_and_validate(base_url=live_server.url, session=token_session, checks=CHECKS)


@pytest.mark.django_db(transaction=True)
@signed_schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_with_signatures(case: Any, live_server: Any, signing_session: requests.Session) -> None:
    case.call_and_validate(base_url=live_server.url, session=signing_session, checks=CHECKS)


@pytest.mark.django_db(transaction=True)
def test_the_signing_hook_makes_signatures_the_server_accepts(live_server: Any, signing_session: requests.Session
                                                              ) -> None:
    """Else the signed run would only ever meet 401s and check nothing past authentication."""
    url = live_server.url
    assert signing_session.post(f"{url}/sync/exchange", json={"watermarks": {}}).status_code == 200
    key = "apps/notes/syncable/caf%C3%A9%2Fx"  # percent-encoded, as schemathesis sends path parameters
    assert signing_session.put(f"{url}/apps/notes/files/{key}", data=b"x").status_code == 201
    assert signing_session.get(f"{url}/apps/{DRIVE_APP_ID}/files/shared/a/b/c").status_code == 404
    assert signing_session.get(f"{url}/apps/other/files/apps/other/syncable/x").status_code == 401
