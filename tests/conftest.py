from __future__ import annotations

import pytest

from tests.harness import Pair, memory_pair


@pytest.fixture(params=["memory"])
def pair(request: pytest.FixtureRequest) -> Pair:
    """A local requester and a cloud responder; scenarios run once per backend."""
    if request.param == "memory":
        return memory_pair()
    raise AssertionError(request.param)
