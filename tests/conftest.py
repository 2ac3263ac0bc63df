from __future__ import annotations

import pytest

from tests.harness import Pair, memory_pair


@pytest.fixture(
    params=["memory", pytest.param("http", marks=[pytest.mark.http, pytest.mark.django_db(transaction=True)])]
)
def pair(request: pytest.FixtureRequest) -> Pair:
    """A local requester and a cloud responder; every scenario runs in-process and over HTTP."""
    if request.param == "memory":
        return memory_pair()
    live_server = request.getfixturevalue("live_server")
    from tests.http_harness import http_pair

    return http_pair(live_server.url)
