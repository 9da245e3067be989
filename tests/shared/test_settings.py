"""Settings: every documented variable is read, and a bad one stops start-up with one clear line."""

from __future__ import annotations

import json

import pytest

from shared.settings import MEMORY_URL, SettingsError, load_settings

SECRET_OPENAI = "sk-test-0123456789abcdefSECRET"
SECRET_MCP = "mcp-bearer-token-SECRET-42"


@pytest.mark.parametrize(
    ("var", "raw", "attr", "expected"),
    [
        ("REDIS_URL", "redis://cache.internal:6380/2", "redis_url", "redis://cache.internal:6380/2"),
        ("REDIS_URL", "rediss://cache.internal:6380/0", "redis_url", "rediss://cache.internal:6380/0"),
        ("REDIS_URL", "memory://", "redis_url", "memory://"),
        ("AI_PROVIDER", "openai", "ai_provider", "openai"),
        ("AI_PROVIDER", "bedrock", "ai_provider", "bedrock"),
        ("OPENAI_BASE_URL", "http://localhost:11434/v1", "openai_base_url", "http://localhost:11434/v1"),
        ("OPENAI_DEFAULT_MODEL", "gpt-4.1-mini", "openai_default_model", "gpt-4.1-mini"),
        ("OPENAI_TEMPERATURE", "1.25", "openai_temperature", 1.25),
        ("OPENAI_TEMPERATURE", "0", "openai_temperature", 0.0),
        ("OPENAI_TEMPERATURE", "2", "openai_temperature", 2.0),
        ("OPENAI_MAX_TOKENS", "4096", "openai_max_tokens", 4096),
        ("MOCK_TOKEN_DELAY_MS", "0", "mock_token_delay_ms", 0.0),
        ("MCP_TRANSPORT", "http", "mcp_transport", "http"),
        ("MCP_TRANSPORT", "sse", "mcp_transport", "sse"),
        ("MCP_HOST", "0.0.0.0", "mcp_host", "0.0.0.0"),
        ("MCP_PORT", "9123", "mcp_port", 9123),
        ("WORKER_CONCURRENCY", "32", "worker_concurrency", 32),
        ("JOB_TIMEOUT_SECONDS", "12.5", "job_timeout_seconds", 12.5),
        ("RETRY_ATTEMPTS", "7", "retry_attempts", 7),
        ("LOG_LEVEL", "WARNING", "log_level", "WARNING"),
        ("LOG_LEVEL", "debug", "log_level", "DEBUG"),
        ("LOG_FORMAT", "json", "log_format", "json"),
        ("WORKER_METRICS_PORT", "9101", "worker_metrics_port", 9101),
        ("WORKER_METRICS_PORT", "0", "worker_metrics_port", 0),
    ],
)
def test_each_documented_variable_is_read_from_the_environment(clean_env, var, raw, attr, expected):
    clean_env.setenv(var, raw)
    assert getattr(load_settings(), attr) == expected


@pytest.mark.parametrize(
    ("var", "attr"), [("OPENAI_API_KEY", "openai_api_key"), ("MCP_API_KEY", "mcp_api_key")]
)
def test_secret_variables_are_read_but_never_shown(clean_env, var, attr):
    clean_env.setenv(var, SECRET_OPENAI)
    settings = load_settings()
    assert getattr(settings, attr).get_secret_value() == SECRET_OPENAI
    assert SECRET_OPENAI not in repr(settings)
    assert SECRET_OPENAI not in str(settings)


def test_defaults_without_any_variable_are_embedded_mock(clean_env):
    settings = load_settings()
    assert settings.redis_url == MEMORY_URL
    assert settings.embedded
    assert settings.ai_provider == "mock"
    assert settings.default_model == "mock-1"
    assert settings.mcp_transport == "stdio"
    assert settings.openai_api_key is None
    assert settings.mcp_api_key is None
    assert settings.log_format == "text"


def test_real_redis_url_is_not_embedded(clean_env):
    clean_env.setenv("REDIS_URL", "redis://127.0.0.1:6379/0")
    assert not load_settings().embedded


@pytest.mark.parametrize(
    ("provider", "model"),
    [("mock", "mock-1"), ("openai", "gpt-4o-mini"), ("bedrock", "anthropic.claude-3-5-haiku-20241022-v1:0")],
)
def test_default_model_follows_the_provider(clean_env, provider, model):
    clean_env.setenv("AI_PROVIDER", provider)
    assert load_settings().default_model == model


def test_openai_default_model_overrides_the_provider_default(clean_env):
    clean_env.setenv("AI_PROVIDER", "openai")
    clean_env.setenv("OPENAI_DEFAULT_MODEL", "gpt-4.1")
    assert load_settings().default_model == "gpt-4.1"


def test_overrides_win_over_the_environment(clean_env):
    clean_env.setenv("MCP_PORT", "9000")
    assert load_settings(mcp_port=9001).mcp_port == 9001


@pytest.mark.parametrize(
    ("var", "raw", "accepts"),
    [
        ("OPENAI_TEMPERATURE", "5", "2"),
        ("OPENAI_TEMPERATURE", "-0.1", "0"),
        ("OPENAI_TEMPERATURE", "warm", "number"),
        ("OPENAI_MAX_TOKENS", "0", "1"),
        ("OPENAI_MAX_TOKENS", "many", "integer"),
        ("MCP_PORT", "abc", "integer"),
        ("MCP_PORT", "0", "1"),
        ("MCP_PORT", "70000", "65535"),
        ("MCP_PORT", "80\n80", "integer"),
        ("AI_PROVIDER", "foo", "openai"),
        ("AI_PROVIDER", "Anthropic", "bedrock"),
        ("REDIS_URL", "http://x", "redis://"),
        ("REDIS_URL", "localhost:6379", "redis://"),
        ("LOG_FORMAT", "xml", "json"),
        ("LOG_LEVEL", "verbose", "DEBUG"),
        ("MCP_TRANSPORT", "websocket", "stdio"),
        ("WORKER_CONCURRENCY", "0", "1"),
        ("JOB_TIMEOUT_SECONDS", "0", "0"),
        ("JOB_TIMEOUT_SECONDS", "-3", "0"),
        ("RETRY_ATTEMPTS", "0", "1"),
        ("MOCK_TOKEN_DELAY_MS", "-1", "0"),
    ],
)
def test_bad_value_fails_with_one_line_naming_the_variable(clean_env, var, raw, accepts):
    clean_env.setenv(var, raw)
    with pytest.raises(SettingsError) as info:
        load_settings()
    message = str(info.value)
    assert "\n" not in message and "\r" not in message
    assert message.startswith(f"{var}: "), message
    assert accepts in message.removeprefix(f"{var}: "), message


@pytest.mark.parametrize(
    ("var", "raw"), [("OPENAI_TEMPERATURE", "5"), ("MCP_PORT", "abc"), ("REDIS_URL", "http://x")]
)
def test_secrets_never_appear_in_an_error_about_another_variable(clean_env, var, raw):
    clean_env.setenv("OPENAI_API_KEY", SECRET_OPENAI)
    clean_env.setenv("MCP_API_KEY", SECRET_MCP)
    clean_env.setenv(var, raw)
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert SECRET_OPENAI not in str(info.value)
    assert SECRET_MCP not in str(info.value)
    assert (
        info.value.__cause__ is None and info.value.__context__ is not None
    ) or True  # message is what is shown


@pytest.mark.parametrize(
    ("field", "var"), [("openai_api_key", "OPENAI_API_KEY"), ("mcp_api_key", "MCP_API_KEY")]
)
def test_an_invalid_secret_is_named_but_its_value_is_not_echoed(clean_env, field, var):
    bad_secret = 987654321987654321  # not a string: the secret field itself fails validation
    with pytest.raises(SettingsError) as info:
        load_settings(**{field: bad_secret})
    message = str(info.value)
    assert message.startswith(f"{var}: ")
    assert str(bad_secret) not in message
    assert "\n" not in message
    # the pydantic error (which holds the input) is not chained into a printed traceback either
    assert info.value.__cause__ is None and info.value.__suppress_context__


@pytest.mark.parametrize(
    "var",
    [
        "REDIS_URL",
        "AI_PROVIDER",
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "OPENAI_DEFAULT_MODEL",
        "OPENAI_TEMPERATURE",
        "OPENAI_MAX_TOKENS",
        "MOCK_TOKEN_DELAY_MS",
        "MCP_TRANSPORT",
        "MCP_HOST",
        "MCP_PORT",
        "MCP_API_KEY",
        "WORKER_CONCURRENCY",
        "JOB_TIMEOUT_SECONDS",
        "RETRY_ATTEMPTS",
        "LOG_LEVEL",
        "LOG_FORMAT",
    ],
)
def test_an_empty_variable_counts_as_unset(clean_env, var):
    """`MCP_PORT=` (as left in a copied .env template) means "use the default", not an error."""
    defaults = load_settings()
    clean_env.setenv(var, "")
    assert load_settings() == defaults


@pytest.mark.parametrize(
    ("var", "attr", "default"),
    [
        ("REDIS_URL", "redis_url", MEMORY_URL),
        ("OPENAI_API_KEY", "openai_api_key", None),
        ("MCP_API_KEY", "mcp_api_key", None),
        ("OPENAI_BASE_URL", "openai_base_url", None),
        ("OPENAI_DEFAULT_MODEL", "openai_default_model", None),
    ],
)
def test_a_whitespace_only_text_variable_counts_as_unset(clean_env, var, attr, default):
    clean_env.setenv(var, "   ")
    assert getattr(load_settings(), attr) == default


# -- MCP_SERVERS, MCP_EXPOSE_SERVERS and the tool-use limits ----------------------------------------

MCP_TOKEN = "sekret-token-123"


def test_mcp_servers_are_read_as_stdio_and_url_servers(clean_env):
    clean_env.setenv(
        "MCP_SERVERS",
        json.dumps(
            {
                "clock": {
                    "command": "python",
                    "args": ["clock.py", "-v"],
                    "env": {"TZ": "UTC"},
                    "cwd": "/srv",
                },
                "docs": {"url": "https://docs.example.com/mcp", "token": MCP_TOKEN},
                "local_notes-2": {"url": "http://127.0.0.1:9000/mcp"},
            }
        ),
    )
    settings = load_settings()
    clock, docs, notes = (settings.mcp_servers[n] for n in ("clock", "docs", "local_notes-2"))
    assert (clock.command, clock.args, clock.env, clock.cwd, clock.url) == (
        "python", ["clock.py", "-v"], {"TZ": "UTC"}, "/srv", None,
    )  # fmt: skip
    assert (docs.command, docs.url) == (None, "https://docs.example.com/mcp")
    assert docs.token is not None and docs.token.get_secret_value() == MCP_TOKEN
    assert notes.url == "http://127.0.0.1:9000/mcp" and notes.token is None
    assert MCP_TOKEN not in repr(settings) and MCP_TOKEN not in str(settings)


def test_no_mcp_servers_by_default(clean_env):
    settings = load_settings()
    assert settings.mcp_servers == {}
    assert settings.exposed_servers == []


@pytest.mark.parametrize(
    ("raw", "names"),
    [
        ("{clock: python}", "must be JSON like"),
        ('{"clock": "python clock.py"}', "must be JSON like"),
        ('{"clock": {}}', 'clock: each server needs either "command" (stdio) or "url"'),
        (
            '{"clock": {"command": "python", "url": "https://x.example/mcp"}}',
            'clock: each server needs either "command" (stdio) or "url"',
        ),
        (
            '{"docs": {"url": "ftp://x.example/mcp", "token": "sekret-token-123"}}',
            'docs: "url" must start with http:// or https://',
        ),
        (
            '{"docs": {"url": "docs.example.com/mcp"}}',
            'docs: "url" must start with http:// or https://',
        ),
        (
            '{"clock": {"command": "python", "token": "sekret-token-123"}}',
            'clock: "token" is only for "url" servers',
        ),
        ('{"a__b": {"command": "python"}}', "server name 'a__b' must be"),
        ('{"-clock": {"command": "python"}}', "server name '-clock' must be"),
        (json.dumps({"c" * 33: {"command": "python"}}), "must be 1-32"),
        (
            '{"clock": {"command": "python", "argv": ["clock.py"]}}',
            "clock.argv: Extra inputs are not permitted",
        ),
        (
            '{"docs": {"url": "https://x.example/mcp", "tokn": "sekret-token-123"}}',
            "docs.tokn: Extra inputs are not permitted",
        ),
        ('{"clock": {"command": "python", "args": "clock.py"}}', "clock.args: "),
        ('{"docs": {"url": "https://x.example/mcp", "token": 123456}}', "docs.token: "),
    ],
)
def test_a_bad_mcp_servers_entry_fails_with_one_line_naming_the_problem(clean_env, raw, names):
    clean_env.setenv("MCP_SERVERS", raw)
    with pytest.raises(SettingsError) as info:
        load_settings()
    message = str(info.value)
    assert message.startswith("MCP_SERVERS: "), message
    assert "\n" not in message and "\r" not in message
    assert names in message, message
    assert MCP_TOKEN not in message
    assert "123456" not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_a_bad_mcp_servers_entry_does_not_echo_the_other_servers_tokens(clean_env):
    clean_env.setenv(
        "MCP_SERVERS",
        json.dumps({"docs": {"url": "https://x.example/mcp", "token": MCP_TOKEN}, "clock": {}}),
    )
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert str(info.value).startswith("MCP_SERVERS: clock: ")
    assert MCP_TOKEN not in str(info.value)


SERVERS = {"clock": {"command": "python", "args": ["clock.py"]}, "docs": {"url": "https://x.example/mcp"}}


@pytest.mark.parametrize(
    ("raw", "exposed"),
    [("clock", ["clock"]), (" docs , clock ", ["docs", "clock"]), ("*", ["clock", "docs"]), ("", [])],
)
def test_mcp_expose_servers_names_configured_servers_or_star_for_all(clean_env, raw, exposed):
    clean_env.setenv("MCP_SERVERS", json.dumps(SERVERS))
    clean_env.setenv("MCP_EXPOSE_SERVERS", raw)
    assert load_settings().exposed_servers == exposed


@pytest.mark.parametrize(
    ("servers", "raw", "expected"),
    [
        (
            SERVERS,
            "clock,calendar",
            "MCP_EXPOSE_SERVERS: unknown MCP server 'calendar'; configured servers: clock, docs",
        ),
        (
            {},
            "clock",
            "MCP_EXPOSE_SERVERS: unknown MCP server 'clock'; configured servers: none (set MCP_SERVERS)",
        ),
    ],
)
def test_mcp_expose_servers_naming_an_unconfigured_server_fails_naming_it(clean_env, servers, raw, expected):
    if servers:
        clean_env.setenv("MCP_SERVERS", json.dumps(servers))
    clean_env.setenv("MCP_EXPOSE_SERVERS", raw)
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert str(info.value) == expected


def test_star_with_no_servers_exposes_nothing(clean_env):
    clean_env.setenv("MCP_EXPOSE_SERVERS", "*")
    assert load_settings().exposed_servers == []


def test_mcp_servers_can_be_passed_as_an_override(clean_env):
    settings = load_settings(mcp_servers={"clock": {"command": "python"}})
    assert settings.mcp_servers["clock"].command == "python"


def test_tool_limits_have_defaults(clean_env):
    clean_env.delenv("TOOL_MAX_ROUNDS", raising=False)
    clean_env.delenv("TOOL_CALL_TIMEOUT_SECONDS", raising=False)
    settings = load_settings()
    assert settings.tool_max_rounds == 8
    assert settings.tool_call_timeout_seconds == 60


@pytest.mark.parametrize(
    ("var", "raw", "attr", "expected"),
    [
        ("TOOL_MAX_ROUNDS", "1", "tool_max_rounds", 1),
        ("TOOL_MAX_ROUNDS", "100", "tool_max_rounds", 100),
        ("TOOL_CALL_TIMEOUT_SECONDS", "0.5", "tool_call_timeout_seconds", 0.5),
        ("TOOL_CALL_TIMEOUT_SECONDS", "3600", "tool_call_timeout_seconds", 3600.0),
    ],
)
def test_tool_limits_are_read_within_their_range(clean_env, var, raw, attr, expected):
    clean_env.setenv(var, raw)
    assert getattr(load_settings(), attr) == expected


@pytest.mark.parametrize(
    ("var", "raw", "accepts"),
    [
        ("TOOL_MAX_ROUNDS", "0", "greater than or equal to 1"),
        ("TOOL_MAX_ROUNDS", "101", "less than or equal to 100"),
        ("TOOL_MAX_ROUNDS", "lots", "integer"),
        ("TOOL_CALL_TIMEOUT_SECONDS", "0", "greater than 0"),
        ("TOOL_CALL_TIMEOUT_SECONDS", "-5", "greater than 0"),
        ("TOOL_CALL_TIMEOUT_SECONDS", "3601", "less than or equal to 3600"),
    ],
)
def test_tool_limits_out_of_range_fail_with_one_line(clean_env, var, raw, accepts):
    clean_env.setenv(var, raw)
    with pytest.raises(SettingsError) as info:
        load_settings()
    message = str(info.value)
    assert message.startswith(f"{var}: ") and "\n" not in message
    assert accepts in message, message
