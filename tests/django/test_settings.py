"""``STARKEEP_SYNC`` settings (CONVENTIONS "Settings"): unknown names raise, overrides are picked up."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings
from rest_framework.test import APIClient

from starkeep_sync.conf import DEFAULTS, sync_settings

from .support import BASE_MS, assert_error, bearer, body, exchange, exchange_ok, record


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
    with override_settings(STARKEEP_SYNC={"MAX_ITEMS_PER_REQUEST": 1}):
        two = [record(f"01HREC000000000000000000{i:02d}", BASE_MS + i) for i in range(2)]
        assert_error(exchange(api, "/sync/exchange", body(records=two), bearer(alice_token)), 413, "too_many_items")
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


# -- system checks: every setting's value is checked at `manage.py check`, not at the first request --

def check_ids(**overrides: Any) -> list[str]:
    from starkeep_sync.checks import check_settings

    with override_settings(STARKEEP_SYNC={"NODE_ID": "cloud", **overrides}):
        # W001 (per-process replay cache) is about the test settings' cache, not the value under test.
        return [e.id for e in check_settings() if e.id != "starkeep_sync.W001"]


def test_defaults_pass_every_check() -> None:
    assert check_ids() == []


def test_every_setting_has_a_rule() -> None:
    from starkeep_sync.checks import RULES

    assert set(RULES) == set(DEFAULTS)


BAD_VALUES: list[tuple[str, Any, str]] = [
    ("STORAGE_ALIAS", "", "E010"),
    ("STORAGE_ALIAS", 3, "E010"),
    ("STORAGE_PREFIX", "/var/blobs", "E011"),
    ("STORAGE_PREFIX", "../outside", "E011"),
    ("STORAGE_PREFIX", "a//b", "E011"),
    ("STORAGE_PREFIX", "a\\b", "E011"),
    ("STORAGE_PREFIX", None, "E011"),
    ("NODE_ID", "", "E012"),
    ("NODE_ID", "my:node", "E012"),
    ("NODE_ID", "x" * 129, "E012"),
    ("NODE_ID", "tab\there", "E012"),
    ("NODE_ID", 7, "E012"),
    ("DEFAULT_PAGE_LIMIT", 0, "E013"),
    ("DEFAULT_PAGE_LIMIT", "1000", "E013"),
    ("MAX_PAGE_LIMIT", -1, "E014"),
    ("MAX_PAGE_LIMIT", 10.5, "E014"),
    ("MAX_ITEMS_PER_REQUEST", True, "E015"),
    ("MAX_REQUEST_BYTES", 0, "E016"),
    ("MAX_BLOB_BYTES", "5G", "E017"),
    ("MAX_SIGNED_PUT_BYTES", 0, "E028"),
    ("UNVERIFIED_BYTES_PER_ADDRESS", "1G", "E029"),
    ("UNVERIFIED_BYTES_TOTAL", -5, "E030"),
    ("SIGNATURE_WINDOW_SECONDS", 0, "E018"),
    ("REPLAY_CACHE_ALIAS", None, "E019"),
    ("MAX_CLOCK_SKEW_MS", -5, "E020"),
    ("PRESIGN_EXPIRES_SECONDS", None, "E021"),
    ("AUTHENTICATION_CLASSES", ["no.such.Authentication"], "E022"),
    ("AUTHENTICATION_CLASSES", [], "E022"),
    ("AUTHENTICATION_CLASSES", "starkeep_sync.api.authentication.DeviceTokenAuthentication", "E022"),
    ("AUTHENTICATION_CLASSES", ["starkeep_sync.conf.DEFAULTS"], "E022"),
    ("UNKNOWN_APP_ROWS", "ignore", "E003"),
    ("COUNT_PENDING", "yes", "E023"),
    ("COUNT_PENDING", 1, "E023"),
    ("THROTTLE_RATES", {"exchange": "fast", "files": None, "health": None}, "E024"),
    ("THROTTLE_RATES", {"exchange": "10/mango", "files": None, "health": None}, "E024"),
    ("THROTTLE_RATES", {"exchange": "0/min", "files": None, "health": None}, "E024"),
    ("THROTTLE_RATES", {"exchange": 100, "files": None, "health": None}, "E024"),
    ("THROTTLE_RATES", {"exchnage": "10/min", "exchange": None, "files": None, "health": None}, "E024"),
    ("THROTTLE_RATES", "1200/min", "E024"),
    ("QUOTA_BLOB_BYTES", 0, "E025"),
    ("QUOTA_BLOB_BYTES", "10G", "E025"),
    ("QUOTA_RECORDS", -1, "E026"),
    ("LIVE_MAX_TIMEOUT", 0, "E032"),
    ("LIVE_MAX_TIMEOUT", 2.5, "E032"),
    ("LIVE_MAX_WAITERS_PER_OWNER", 0, "E033"),
    ("LIVE_MAX_WAITERS_PER_OWNER", "32", "E033"),
    ("LIVE_WAKEUP", "memcached", "E034"),
    ("LIVE_WAKEUP", None, "E034"),
]


@pytest.mark.parametrize("name, value, check_id", BAD_VALUES, ids=[f"{n}={v!r}"[:60] for n, v, _ in BAD_VALUES])
def test_bad_value_fails_the_check_with_a_hint(name: str, value: Any, check_id: str) -> None:
    from starkeep_sync.checks import check_settings

    with override_settings(STARKEEP_SYNC={"NODE_ID": "cloud", name: value}):
        errors = [e for e in check_settings() if e.id == f"starkeep_sync.{check_id}"]
    assert len(errors) == 1, errors
    assert name in errors[0].msg and errors[0].hint


def test_every_setting_has_a_tested_bad_value() -> None:
    assert {name for name, _, _ in BAD_VALUES} == set(DEFAULTS)


GOOD_VALUES: list[tuple[str, Any]] = [
    ("STORAGE_PREFIX", ""),
    ("STORAGE_PREFIX", "sync/blobs/"),
    ("NODE_ID", "edge-7.eu"),
    ("THROTTLE_RATES", {"exchange": "5/s", "files": "100/sec", "health": "1/day", "changes": "10/min"}),
    ("THROTTLE_RATES", {"exchange": "60/minute", "files": "3/h", "health": None, "changes": None}),
    ("QUOTA_BLOB_BYTES", 10 * 1024**3),
    ("QUOTA_RECORDS", 1),
    ("COUNT_PENDING", False),
    ("UNKNOWN_APP_ROWS", "halt"),
    ("AUTHENTICATION_CLASSES", ("starkeep_sync.api.authentication.DeviceTokenAuthentication",)),
    ("LIVE_MAX_TIMEOUT", 60),
    ("LIVE_MAX_WAITERS_PER_OWNER", None),
    ("LIVE_WAKEUP", "local"),
    ("LIVE_WAKEUP", "postgresql"),
]


def test_live_wakeup_through_redis_needs_a_redis_cache(settings: Any) -> None:
    assert check_ids(LIVE_WAKEUP="redis") == ["starkeep_sync.E035"]
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                                   "LOCATION": "redis://127.0.0.1:6379/0"}}
    assert check_ids(LIVE_WAKEUP="redis") == []


@pytest.mark.parametrize("name, value", GOOD_VALUES)
def test_good_values_pass(name: str, value: Any) -> None:
    assert check_ids(**{name: value}) == []


def test_default_page_limit_above_the_maximum_is_an_error() -> None:
    assert check_ids(DEFAULT_PAGE_LIMIT=500, MAX_PAGE_LIMIT=100) == ["starkeep_sync.E027"]
    assert check_ids(DEFAULT_PAGE_LIMIT=100, MAX_PAGE_LIMIT=100) == []


def test_throttle_rates_missing_a_scope_warns_that_it_is_unthrottled() -> None:
    from starkeep_sync.checks import check_settings

    with override_settings(STARKEEP_SYNC={"THROTTLE_RATES": {"exchange": "10/min"}}):
        messages = check_settings()
    assert [m.id for m in messages if m.id != "starkeep_sync.W001"] == ["starkeep_sync.W002"]
    warning = next(m for m in messages if m.id == "starkeep_sync.W002")
    assert "'files'" in warning.msg and "'health'" in warning.msg


def test_bad_values_are_reported_together_and_before_the_storage_lookup() -> None:
    ids = check_ids(NODE_ID="", MAX_PAGE_LIMIT=0, STORAGE_ALIAS="nowhere", THROTTLE_RATES={"exchange": "fast"})
    assert {"starkeep_sync.E012", "starkeep_sync.E014", "starkeep_sync.E024"} <= set(ids)


def test_manage_py_check_fails_on_a_bad_rate() -> None:
    from django.core.management import call_command
    from django.core.management.base import SystemCheckError

    with override_settings(STARKEEP_SYNC={"THROTTLE_RATES": {"exchange": "fast", "files": None, "health": None}}):
        with pytest.raises(SystemCheckError, match=r"starkeep_sync\.E024.*\n.*HINT: Map the scopes"):
            call_command("check")


def test_unverified_bounds_smaller_than_the_largest_signed_body_are_an_error() -> None:
    from starkeep_sync.checks import check_values
    from starkeep_sync.conf import DEFAULTS

    ids = [e.id for e in check_values({**DEFAULTS, "UNVERIFIED_BYTES_PER_ADDRESS": 1024})]
    assert ids == ["starkeep_sync.E031"]
    assert check_values({**DEFAULTS, "UNVERIFIED_BYTES_TOTAL": None}) == []
