"""MCP server names as the model sees them (`server__tool`), and secrets masked wherever a server's
command line or stderr is shown."""

from __future__ import annotations

import re

import pytest

from shared.logs import redact
from shared.tool_config import function_name

PROVIDER_SAFE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # what OpenAI and Bedrock accept as a function name


# -- function_name ----------------------------------------------------------------------------------


def test_function_name_joins_server_and_tool_with_a_double_underscore():
    assert function_name("clock", "now") == "clock__now"
    assert function_name("my-docs", "search_pages") == "my-docs__search_pages"


@pytest.mark.parametrize(
    ("tool", "expected"),
    [
        ("get.weather", "srv__get_weather"),
        ("files/read", "srv__files_read"),
        ("say hello", "srv__say_hello"),
        ("café:crème", "srv__caf__cr_me"),
        ("a+b@c", "srv__a_b_c"),
    ],
)
def test_function_name_replaces_characters_providers_refuse(tool, expected):
    name = function_name("srv", tool)
    assert name == expected
    assert PROVIDER_SAFE.fullmatch(name)


def test_function_name_keeps_a_name_of_exactly_64_characters():
    tool = "t" * (64 - len("srv__"))
    assert function_name("srv", tool) == f"srv__{tool}"


def test_a_long_function_name_is_cut_to_64_safe_characters_and_keeps_its_start():
    name = function_name("clock", "x" * 300)
    assert len(name) == 64
    assert PROVIDER_SAFE.fullmatch(name)
    assert name.startswith("clock__xxx")
    assert function_name("clock", "x" * 300) == name  # the same on every call and in every worker


def test_long_tool_names_that_differ_only_at_the_end_stay_distinct():
    stem = "fetch_the_quarterly_revenue_report_for_the_region_named_"
    tools = [stem + region for region in ("north", "south", "east", "west", "north-east")]
    names = [function_name("reports", tool) for tool in tools]
    assert all(len(n) <= 64 and PROVIDER_SAFE.fullmatch(n) for n in names)
    assert len(set(names)) == len(tools)
    # and different servers with the same long tool get different names too
    assert function_name("a", stem * 2) != function_name("b", stem * 2)


# -- redact ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (
            "npx server-postgres postgresql://app:hunter2@db/prod",
            "npx server-postgres postgresql://***@db/prod",
        ),
        ("fatal: password=hunter2 rejected", "fatal: password=*** rejected"),
        ("GET https://api.example.com/v1?api_key=K123 failed", "GET https://api.example.com/v1?*** failed"),
        ("sent Authorization: Bearer abc.def", "sent Authorization: Bearer ***"),
        ("python clock.py --port 9000", "python clock.py --port 9000"),
    ],
)
def test_secrets_in_commands_and_stderr_are_masked(text, shown):
    assert redact(text) == shown
