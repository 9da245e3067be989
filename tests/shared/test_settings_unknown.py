"""A misspelt setting is not silently ignored: one WARNING at start names it and the nearest setting.

(Misspellings that would lift a limit or open access stop start-up instead: test_tenant_keys.py.)
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest
from processes import ROOT, process_env

from shared import settings as settings_module
from shared.settings import SettingsError, load_settings


@pytest.fixture
def fresh(clean_env):
    clean_env.setattr(settings_module, "_warned", set())
    return clean_env


def warnings(caplog) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == "shared.settings" and r.levelno == logging.WARNING
    ]


def test_each_unknown_variable_is_warned_once_with_the_nearest_setting(fresh, caplog):
    fresh.setenv("WORKER_CONCURENCY", "4")
    fresh.setenv("ai_providr", "openai")  # names are case-insensitive, as Settings reads them
    fresh.setenv("REDIS_PASSWORD", "hunter2")
    caplog.set_level(logging.WARNING)
    settings = load_settings()
    assert settings.worker_concurrency == 10  # ignored, which is why it is worth a warning
    assert warnings(caplog) == [
        "AI_PROVIDR is not a setting mcp-queue knows; did you mean AI_PROVIDER? (ignored)",
        "REDIS_PASSWORD is not a setting mcp-queue knows; did you mean REDIS_URL? (ignored)",
        "WORKER_CONCURENCY is not a setting mcp-queue knows; did you mean WORKER_CONCURRENCY? (ignored)",
    ]
    assert "hunter2" not in caplog.text
    load_settings()
    assert len(warnings(caplog)) == 3, "once per process, not on every load"


def test_the_openai_sdks_own_variables_and_keys_that_providers_name_are_not_warned(fresh, caplog):
    fresh.setenv("OPENAI_ORG_ID", "org-1")
    fresh.setenv("OPENAI_LOCAL_KEY", "k")
    fresh.setenv("PROVIDERS", json.dumps({"local": {"kind": "openai", "api_key_env": "OPENAI_LOCAL_KEY"}}))
    fresh.setenv("HOME_GROWN_VAR", "x")  # not under a prefix of ours
    for name, value in [("REDIS_SERVICE_HOST", "10.0.0.7"), ("REDIS_SERVICE_PORT", "6379"),
                        ("REDIS_PORT_6379_TCP_ADDR", "10.0.0.7"), ("REDIS_PORT", "tcp://10.0.0.7:6379")]:  # fmt: skip
        fresh.setenv(name, value)  # what Kubernetes sets in every pod for a Service named "redis"
    caplog.set_level(logging.WARNING)
    load_settings()
    assert warnings(caplog) == []


def test_a_misspelt_name_in_dot_env_is_warned_too(fresh, caplog, tmp_path):
    (tmp_path / ".env").write_text("MCP_TRANSPROT=http\n")
    fresh.chdir(tmp_path)
    caplog.set_level(logging.WARNING)
    load_settings()
    assert warnings(caplog) == [
        "MCP_TRANSPROT is not a setting mcp-queue knows; did you mean MCP_TRANSPORT? (ignored)"
    ]


def test_a_worker_started_with_a_misspelt_setting_logs_one_json_warning_line(redis_url):
    env = process_env(redis_url, WORKER_CONCURENCY="3", LOG_FORMAT="json")
    done = subprocess.run(
        [sys.executable, "-m", "worker.cli", "--burst"], env=env, cwd=ROOT, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines() if "WORKER_CONCURENCY" in line]
    assert len(lines) == 1 and lines[0]["level"] == "warning"
    assert "did you mean WORKER_CONCURRENCY?" in lines[0]["message"]


def test_a_dot_env_that_is_not_text_stops_start_up_with_one_line(fresh, tmp_path):
    (tmp_path / ".env").write_bytes(b"MCP_TRANSPORT=http\n\xff\xfe junk\n")
    fresh.chdir(tmp_path)
    with pytest.raises(SettingsError, match=r"^\.env in .* cannot be read \(UnicodeDecodeError\)"):
        load_settings()
