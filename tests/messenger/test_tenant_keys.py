"""Tenants: a key names one tenant, the admin key is the operator, and one request carries one
credential. Keys are only held as digests."""

from __future__ import annotations

import pytest
from starlette.datastructures import Headers

from messenger.tenants import LOCAL_OPERATOR, Tenant, Tenants, TooManyCredentials
from shared.settings import SettingsError, derived_tenant_name, load_settings

KEYS = {"alice": "tok-alice-0001", "bob": "tok-bob-0002"}


@pytest.fixture
def tenants(clean_env) -> Tenants:
    clean_env.setenv("MCP_API_KEYS", '{"alice": "tok-alice-0001", "bob": "tok-bob-0002"}')
    clean_env.setenv("MCP_API_KEY", "legacy-token-1, legacy-token-2")
    clean_env.setenv("MCP_ADMIN_KEY", "admin-token-9")
    return Tenants.from_settings(load_settings())


def test_each_key_names_its_tenant_and_the_admin_key_is_the_operator(tenants):
    assert tenants.identify("tok-alice-0001") == Tenant("alice")
    assert tenants.identify(b"tok-bob-0002") == Tenant("bob")
    assert tenants.identify("legacy-token-2") == Tenant(derived_tenant_name("legacy-token-2"))
    assert derived_tenant_name("legacy-token-2").startswith("key-") and len(derived_tenant_name("x")) == 12
    assert tenants.identify("admin-token-9") == Tenant("operator", operator=True)
    for wrong in ("", "tok-alice-000", "tok-alice-00011", "TOK-ALICE-0001", "admin-token-9 x"):
        assert tenants.identify(wrong) is None
    assert tenants.names == sorted(["alice", "bob", derived_tenant_name("legacy-token-1"),
                                    derived_tenant_name("legacy-token-2")])  # fmt: skip


def test_keys_are_kept_only_as_digests(tenants):
    held = repr(vars(tenants))
    for token in [*KEYS.values(), "legacy-token-1", "admin-token-9"]:
        assert token not in held and token.encode().hex() not in held


@pytest.mark.parametrize(
    ("headers", "query", "expected"),
    [
        ([(b"authorization", b"Bearer tok-alice-0001")], b"", Tenant("alice")),
        ([(b"x-api-key", b"tok-bob-0002")], b"", Tenant("bob")),
        ({"Authorization": "bearer admin-token-9"}, b"", LOCAL_OPERATOR),
        ([], b"", None),
        ([(b"authorization", b"Basic dG9rLWFsaWNlLTAwMDE=")], b"", None),
        ([], b"token=tok-alice-0001", None),  # a query token counts only where allowed
    ],
)
def test_one_credential_identifies_the_caller(tenants, headers, query, expected):
    assert tenants.from_request(headers, query) == expected


def test_a_query_token_counts_where_allowed(tenants):
    assert tenants.from_request([], b"x=1&token=tok-bob-0002", allow_query=True) == Tenant("bob")


@pytest.mark.parametrize(
    ("headers", "query"),
    [
        ([(b"authorization", b"Bearer tok-alice-0001"), (b"authorization", b"Bearer tok-bob-0002")], b""),
        ([(b"authorization", b"Bearer tok-alice-0001"), (b"authorization", b"Bearer tok-alice-0001")], b""),
        ([(b"authorization", b"Bearer tok-alice-0001"), (b"x-api-key", b"tok-alice-0001")], b""),
        ([(b"x-api-key", b"tok-bob-0002")], b"token=tok-bob-0002"),
        ([], b"token=a&token=b"),
        (Headers(raw=[(b"x-api-key", b"a"), (b"x-api-key", b"b")]), b""),
    ],
)
def test_more_than_one_credential_is_refused(tenants, headers, query):
    with pytest.raises(TooManyCredentials) as info:
        tenants.from_request(headers, query, allow_query=True)
    assert "credentials; send exactly one" in info.value.message
    assert "tok-" not in info.value.message


def test_without_keys_every_caller_is_the_local_operator(clean_env):
    open_ = Tenants.from_settings(load_settings())
    assert not open_.required
    assert open_.from_request([(b"x-api-key", b"anything")]) == LOCAL_OPERATOR
    assert open_.from_request(None) == LOCAL_OPERATOR
    with pytest.raises(TooManyCredentials):
        open_.from_request([(b"x-api-key", b"a"), (b"authorization", b"Bearer b")])


def test_stdio_is_the_local_operator_even_with_keys(tenants):
    assert tenants.from_request(None) == LOCAL_OPERATOR


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"MCP_API_KEYS": '{"al ice": "k1"}'}, "MCP_API_KEYS: tenant name 'al ice' must be 1-64 letters"),
        ({"MCP_API_KEYS": '{"a:b": "k1"}'}, "tenant name 'a:b'"),
        ({"MCP_API_KEYS": '{"operator": "k1"}'}, "and not 'operator'"),
        ({"MCP_API_KEYS": '{"alice": "k1", "bob": "k1"}'}, "'alice' and 'bob' have the same key"),
        ({"MCP_API_KEYS": '{"alice": "k1"}', "MCP_ADMIN_KEY": "k1"}, "'alice' and 'MCP_ADMIN_KEY' have the same"),
        ({"MCP_API_KEYS": '{"alice": ""}'}, "the key of 'alice' is empty"),
        ({"MCP_API_KEY": "k1", "MCP_API_KEYS": '{"key-6ab9f1eb": "k2"}'},
         "MCP_API_KEYS: tenant name 'key-6ab9f1eb' is already the name of a key in MCP_API_KEY"),  # k1's derived name
        ({"MCP_API_KEYS": '["k1"]'}, 'MCP_API_KEYS: must be JSON like {"alice": "<key>"'),
        ({"MCP_API_KEYS": "not json"}, 'MCP_API_KEYS: must be JSON like {"alice": "<key>"'),
        ({"MCP_API_KEYS": '{"alice": "k1"}', "TENANT_LIMITS": '{"carol": {"daily_usd": 1}}'},
         "TENANT_LIMITS names 'carol', not a tenant"),
        ({"MCP_API_KEYS": '{"alice": "k1"}', "TENANT_LIMITS": '{"alice": {"daily_usd": 1, "dayly_usd": 2}}'},
         "TENANT_LIMITS: alice.dayly_usd: Extra inputs are not permitted"),
        ({"MCP_API_KEYS": '{"alice": "k1"}', "TENANT_LIMITS": '{"alice": {"daily_usd": -1}}'},
         "TENANT_LIMITS: alice.daily_usd: Input should be greater than 0"),
        ({"TENANT_LIMITS": '{"*": 5}'}, 'TENANT_LIMITS: must be JSON like {"alice": {"daily_usd": 5'),
        ({"MCP_API_KEYZ": '{"alice": "k1"}'}, "MCP_API_KEYZ is not a setting mcp-queue knows; did you mean MCP_API_KEY"),
        ({"TENANT_LIMIT": "{}"}, "did you mean TENANT_LIMITS"),
        ({"BUDGET_DAYLY_USD": "3"}, "did you mean BUDGET_DAILY_USD"),
    ],
)  # fmt: skip
def test_bad_tenant_settings_stop_start_up_with_one_line(clean_env, env, expected):
    for name, value in env.items():
        clean_env.setenv(name, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    message = info.value.message
    assert expected in message and "\n" not in message
    assert "k1" not in message.replace(expected, "")


def test_tenant_limits_merge_over_every_tenants_entry(clean_env):
    clean_env.setenv("MCP_API_KEYS", '{"alice": "k1", "bob": "k2"}')
    clean_env.setenv("RATE_LIMIT_PER_MINUTE", "100")
    clean_env.setenv(
        "TENANT_LIMITS", '{"*": {"daily_usd": 2, "requests_per_minute": 30}, "alice": {"daily_usd": 5}}'
    )
    settings = load_settings()
    assert settings.limits_for("alice").model_dump() == {
        "per_request_usd": None, "hourly_usd": None, "daily_usd": 5.0, "requests_per_minute": 30}  # fmt: skip
    assert settings.limits_for("bob").daily_usd == 2.0
    clean_env.setenv("TENANT_LIMITS", '{"alice": {"hourly_usd": 1}}')
    assert load_settings().limits_for("bob").requests_per_minute == 100
