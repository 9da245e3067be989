"""How the commands end on an error: one line in our words, and the exit code for its kind."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.errors import JobNotFound, ProviderError, QueueFull, Refused, SettingsError
from shared.exits import FAILED, WRONG_INPUT, failure
from shared.models import ChatRequest

URL = "redis://app:hunter2@db:6379/0"


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (SettingsError("MCP_PORT: not a port"), WRONG_INPUT),
        (ProviderError("OPENAI_API_KEY is not set"), WRONG_INPUT),
        (Refused("hourly budget reached"), FAILED),
        (QueueFull(10, 10), FAILED),
        (JobNotFound("abc"), FAILED),
    ],
)
def test_our_errors_keep_their_message_and_get_the_code_for_their_kind(error, code):
    assert failure(error, URL) == (error.message, code)


def test_a_validation_error_reads_like_ours():
    with pytest.raises(ValidationError) as info:
        ChatRequest(message="hi", temperature=9)
    assert failure(info.value, URL) == (
        "invalid temperature: Input should be less than or equal to 2",
        WRONG_INPUT,
    )


def test_redis_away_names_the_url_without_its_password():
    line, code = failure(RedisConnectionError("Error 111 connecting to db:6379."), URL)
    assert code == FAILED
    assert line == (
        "cannot reach Redis at redis://***@db:6379/0: Error 111 connecting to db:6379 "
        "(is redis-server running? check REDIS_URL)"
    )


@pytest.mark.parametrize(
    ("error", "says"),
    [
        (AuthenticationError("Authentication required."), "requires a password and REDIS_URL gives none"),
        (AuthenticationError("invalid username-password pair or user is disabled."), "refused the user or password in REDIS_URL"),
        (NoPermissionError("this user has no permissions to run the 'zadd' command"), "the Redis user in REDIS_URL lacks a permission"),
        (RedisTimeoutError("Timeout connecting to server"), "did not answer in time: check the host and port in REDIS_URL"),
        (RedisConnectionError("Error 111 connecting to db:6379. Connect call failed ('db', 6379)."), ": connection refused (is redis-server running?"),
    ],
)  # fmt: skip
def test_each_way_redis_can_refuse_us_is_one_line_naming_redis_url(error, says):
    line, code = failure(error, URL)
    assert code == FAILED and says in line and "REDIS_URL" in line and "hunter2" not in line, line


def test_anything_else_is_still_one_line():
    line, code = failure(RuntimeError("first line\nsecond line"), URL)
    assert (line, code) == ("RuntimeError: first line second line", FAILED)
    assert failure(KeyError(), URL) == ("KeyError", FAILED)


def test_a_command_redis_refuses_is_named_as_a_refusal_not_as_redis_being_away():
    refused = ResponseError(
        "WRONGTYPE Operation against a key holding the wrong kind of value script: 80192f29, on @user_script:21."
    )
    assert failure(refused, URL) == (
        "Redis refused a command: WRONGTYPE Operation against a key holding the wrong kind of value "
        "(a key damaged or written by hand?)",
        FAILED,
    )
