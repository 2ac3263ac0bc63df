"""``STARKEEP_SYNC`` settings (CONVENTIONS "Settings"): unknown names raise, overrides are picked up."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings
from rest_framework.test import APIClient

from starkeep_sync.conf import DEFAULTS, sync_settings

from .support import assert_error, bearer, body, exchange, exchange_ok


def test_defaults() -> None:
    assert sync_settings.MAX_PAGE_LIMIT == DEFAULTS["MAX_PAGE_LIMIT"]
    assert sync_settings.SIGNATURE_WINDOW_SECONDS == 300


@pytest.mark.parametrize("name", ["MAX_PAGE_LIMT", "max_page_limit", "SIGNATURE_WINDOW"])
def test_unknown_setting_raises_naming_it(name: str) -> None:
    with override_settings(STARKEEP_SYNC={"NODE_ID": "cloud", name: 5}):
        with pytest.raises(ImproperlyConfigured, match=name):
            sync_settings.MAX_PAGE_LIMIT  # noqa: B018 - reading is the test
    # Back to a valid configuration once the override ends.
    assert sync_settings.MAX_PAGE_LIMIT == DEFAULTS["MAX_PAGE_LIMIT"]


@pytest.mark.django_db
def test_unknown_setting_fails_requests_too(api: APIClient, alice_token: str) -> None:
    with override_settings(STARKEEP_SYNC={"MAX_PAGE_LIMT": 5}):
        with pytest.raises(ImproperlyConfigured, match="MAX_PAGE_LIMT"):
            exchange(api, "/sync/exchange", body(), bearer(alice_token))


def test_non_dict_setting_raises() -> None:
    with override_settings(STARKEEP_SYNC=[("MAX_PAGE_LIMIT", 5)]):
        with pytest.raises(ImproperlyConfigured, match="STARKEEP_SYNC"):
            sync_settings.MAX_PAGE_LIMIT  # noqa: B018


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="NOT_A_SETTING"):
        sync_settings.NOT_A_SETTING  # noqa: B018


def test_bad_import_string_names_the_setting() -> None:
    with override_settings(STARKEEP_SYNC={"AUTHENTICATION_CLASSES": ["no.such.Authentication"]}):
        with pytest.raises(ImproperlyConfigured, match="AUTHENTICATION_CLASSES") as info:
            sync_settings.AUTHENTICATION_CLASSES  # noqa: B018
        assert "no.such.Authentication" in str(info.value)


def test_override_settings_is_picked_up_and_undone() -> None:
    assert sync_settings.MAX_PAGE_LIMIT == DEFAULTS["MAX_PAGE_LIMIT"]  # cached now
    with override_settings(STARKEEP_SYNC={"MAX_PAGE_LIMIT": 7, "NODE_ID": "elsewhere"}):
        assert sync_settings.MAX_PAGE_LIMIT == 7
        assert sync_settings.NODE_ID == "elsewhere"
        assert sync_settings.MAX_ITEMS_PER_REQUEST == DEFAULTS["MAX_ITEMS_PER_REQUEST"]
    assert sync_settings.MAX_PAGE_LIMIT == DEFAULTS["MAX_PAGE_LIMIT"]
    assert sync_settings.NODE_ID == "cloud"


def test_pytest_settings_fixture_is_picked_up(settings: Any) -> None:
    assert sync_settings.DEFAULT_PAGE_LIMIT == DEFAULTS["DEFAULT_PAGE_LIMIT"]
    settings.STARKEEP_SYNC = {"DEFAULT_PAGE_LIMIT": 3}
    assert sync_settings.DEFAULT_PAGE_LIMIT == 3


@pytest.mark.django_db
def test_override_reaches_the_views(api: APIClient, alice_token: str) -> None:
    exchange_ok(exchange(api, "/sync/exchange", body(limit=50), bearer(alice_token)))  # settings cached
    with override_settings(STARKEEP_SYNC={"MAX_PAGE_LIMIT": 10}):
        assert_error(exchange(api, "/sync/exchange", body(limit=50), bearer(alice_token)), 400, field="limit")
    exchange_ok(exchange(api, "/sync/exchange", body(limit=50), bearer(alice_token)))


@pytest.mark.django_db
def test_authentication_classes_setting_is_used(api: APIClient, alice_token: str) -> None:
    only_signatures = ["starkeep_sync.api.authentication.AppSignatureAuthentication"]
    with override_settings(STARKEEP_SYNC={"AUTHENTICATION_CLASSES": only_signatures}):
        response = exchange(api, "/sync/exchange", body(), bearer(alice_token))
        assert_error(response, 401, "not_authenticated")
        assert response["WWW-Authenticate"].startswith("StarkeepAppSignature")
    exchange_ok(exchange(api, "/sync/exchange", body(), bearer(alice_token)))


def test_system_check_names_a_bad_unknown_app_rows_policy() -> None:
    from starkeep_sync.checks import check_settings

    with override_settings(STARKEEP_SYNC={"NODE_ID": "cloud", "UNKNOWN_APP_ROWS": "ignore"}):
        ids = [e.id for e in check_settings()]
    assert "starkeep_sync.E003" in ids
    for policy in ("reject", "halt"):
        with override_settings(STARKEEP_SYNC={"NODE_ID": "cloud", "UNKNOWN_APP_ROWS": policy}):
            assert "starkeep_sync.E003" not in [e.id for e in check_settings()]
