"""shared/logs.py: one `redact` masks credentials everywhere, and no log record (text or JSON) carries
a URL credential, a configured secret, or a prompt/answer from arq's own job lines."""

from __future__ import annotations

import inspect
import io
import json
import logging

import arq.worker
import pytest

from shared import logs
from shared.logs import SafeRecords, keep_secret, redact

PROMPT = "tell nobody about the blue lagoon"


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("redis://:hunter22@db:6379/0", "redis://***@db:6379/0"),
        ("redis://app:hunter22@db:6379/0?password=x", "redis://***@db:6379/0?***"),
        ("the provider at http://u:pw@10.0.0.1:8080/v1?api-key=zz failed", "the provider at http://***@10.0.0.1:8080/v1?*** failed"),
        ("Authorization: Bearer abc.def", "Authorization: Bearer ***"),
        ('{"token": "abcd", "max_tokens": 5}', '{"token": ***, "max_tokens": 5}'),
        ("prompt_tokens=40 completion_tokens: 7", "prompt_tokens=40 completion_tokens: 7"),
    ],
)  # fmt: skip
def test_redact_masks_credentials_and_leaves_the_rest(text, masked):
    assert redact(text) == masked


def test_a_kept_secret_is_masked_anywhere_and_short_values_are_not_kept():
    keep_secret("sk-planted-secret-123", "ab")
    assert redact("key sk-planted-secret-123 rejected") == "key *** rejected"
    assert redact("a tab") == "a tab"
    assert redact("x zz-given-1 y", ["zz-given-1"]) == "x *** y"


def _emit(fmt: str, name: str, msg: str, *args, exc: BaseException | None = None, **extra) -> str:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.JsonFormatter() if fmt == "json" else logging.Formatter("%(message)s"))
    handler.addFilter(SafeRecords())
    exc_info = (type(exc), exc, exc.__traceback__) if exc else None
    # built and handled directly: another test's logging set-up (levels, disabled loggers) cannot mute it
    record = logging.getLogger(name).makeRecord(
        name, logging.INFO, __file__, 0, msg, args, exc_info, extra=extra
    )
    handler.handle(record)
    return out.getvalue()


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_arq_job_lines_keep_job_function_timing_and_outcome_but_not_arguments_or_results(fmt):
    request = f"request={{'message': '{PROMPT}'}}"
    started = _emit(fmt, "arq.worker", "%6.2fs → %s(%s)%s", 0.01, "job1:chat", request, " try=2")
    done = _emit(fmt, "arq.worker", "%6.2fs ← %s ● %s", 0.5, "job1:chat", f"{{'aiResponse': '{PROMPT}'}}")
    failed = _emit(fmt, "arq.worker", "%6.2fs ! %s failed, %s: %s", 0.5, "job1:chat", "ValueError", PROMPT,
                   exc=ValueError(PROMPT))  # fmt: skip
    for line in (started, done, failed):
        assert PROMPT not in line and "job1:chat" in line
    assert "try=2" in started and "ValueError" in failed
    if fmt == "json":
        records = [json.loads(line) for line in (started, done, failed)]
        assert [(r["job_id"], r["function"], r["arq_event"]) for r in records] == [
            ("job1", "chat", "started"), ("job1", "chat", "completed"), ("job1", "chat", "failed"),
        ]  # fmt: skip


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_credentials_are_masked_in_message_extras_and_traceback(fmt):
    try:
        raise ConnectionError("cannot reach redis://:hunter22@db:6379/0")
    except ConnectionError as e:
        line = _emit(fmt, "worker.job", "at %s", "http://u:hunter22@x/v1", exc=e, error="Bearer hunter22")
    assert "hunter22" not in line and line.count("***") >= 3


def test_the_arq_lines_we_rewrite_are_the_ones_arq_logs():
    """Pins arq's job-line templates: if arq changes one, this fails instead of a prompt leaking."""
    source = inspect.getsource(arq.worker)
    for template in logs._ARQ_LINES:
        assert repr(template)[1:-1] in source or template in source, template


def test_every_configured_secret_is_masked_once_settings_are_loaded(clean_env):
    from shared.settings import load_settings

    servers = {"db": {"command": "db-server", "env": {"DB_PASSWORD": "stdio-env-pw-91", "MODE": "production"}},
               "docs": {"url": "https://svc:url-pw-1234@docs.example/mcp", "token": "mcp-token-5678"}}  # fmt: skip
    clean_env.setenv("MCP_SERVERS", json.dumps(servers))
    clean_env.setenv("MCP_API_KEYS", json.dumps({"alice": "tenant-key-abcd"}))
    clean_env.setenv("MCP_ADMIN_KEY", "operator-key-efgh")
    clean_env.setenv("OPENAI_API_KEY", "sk-provider-ijkl")
    load_settings()
    planted = ["stdio-env-pw-91", "url-pw-1234", "mcp-token-5678", "tenant-key-abcd", "operator-key-efgh",
               "sk-provider-ijkl"]  # fmt: skip
    masked = redact(" ".join(planted) + " production")
    assert masked == "*** *** *** *** *** *** production"


def test_a_bad_redis_url_is_refused_without_echoing_it(clean_env):
    from shared.settings import SettingsError, load_settings

    for url in ("redis//:hunter22@db:6379/0", "redis://:hunter22@db:63x9/0"):
        clean_env.setenv("REDIS_URL", url)
        with pytest.raises(SettingsError) as refused:
            load_settings()
        assert refused.value.message.startswith("REDIS_URL: ") and "hunter22" not in refused.value.message
