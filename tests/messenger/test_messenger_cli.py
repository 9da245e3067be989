"""The commands as a person types them: `messenger ask` in embedded mode, and clear one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, module: str = "messenger.cli", **env: str) -> subprocess.CompletedProcess:
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "AI_", "MCP_", "MOCK_", "REDIS_"))
    }
    clean.update(MOCK_TOKEN_DELAY_MS="1", **env)
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT / "tests",
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_ask_streams_an_answer_with_no_redis_and_no_key():
    done = run("ask", "hello")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Mock answer to: hello")
    assert "model mock-1" in done.stderr and "tokens" in done.stderr and "job " in done.stderr


def test_ask_json_prints_the_result():
    done = run("ask", "hello", "--json")
    result = json.loads(done.stdout)
    assert result["status"] == "completed" and result["aiResponse"].startswith("Mock answer to: hello")


def test_ask_takes_a_priority_and_names_the_choices_when_it_is_wrong():
    done = run("ask", "hello", "--priority", "low", "--json")
    assert json.loads(done.stdout)["status"] == "completed", done.stderr
    wrong = run("ask", "hello", "--priority", "urgent")
    assert (
        wrong.returncode == 2
        and "'high', 'normal', 'low'" in wrong.stderr
        and "Traceback" not in wrong.stderr
    )


@pytest.mark.parametrize(
    ("env", "variable"),
    [({"OPENAI_TEMPERATURE": "5"}, "OPENAI_TEMPERATURE"), ({"MCP_PORT": "http"}, "MCP_PORT"),
     ({"AI_PROVIDER": "gemini"}, "AI_PROVIDER"), ({"REDIS_URL": "http://x"}, "REDIS_URL")],
)  # fmt: skip
def test_a_bad_setting_stops_start_up_with_one_line_naming_it(env, variable):
    done = run("ask", "hello", **env)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and variable in done.stderr


def test_openai_without_a_key_says_which_setting_is_missing_and_never_echoes_secrets():
    done = run("ask", "hello", AI_PROVIDER="openai", MCP_API_KEY="topsecret")
    assert done.returncode == 2 and "OPENAI_API_KEY" in done.stderr and "topsecret" not in done.stderr


def test_an_empty_message_is_refused():
    done = run("ask", "   ")
    assert done.returncode == 2 and "message" in done.stderr


def test_job_commands_explain_that_embedded_jobs_are_not_shared():
    done = run("job", "abc")
    assert done.returncode == 2 and "REDIS_URL" in done.stderr


def test_a_separate_worker_needs_redis_url():
    done = run(module="worker.cli")
    assert done.returncode == 2 and "REDIS_URL" in done.stderr


CLOCK = {"clock": {"command": sys.executable, "args": [str(ROOT / "tests" / "mcp_clock_server.py")]}}


def test_ask_with_an_mcp_server_shows_the_tool_call_and_answers_with_its_result():
    done = run("ask", "--mcp-server", "clock", "what time is it now?", MCP_SERVERS=json.dumps(CLOCK))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0] == "[tool call clock/now {}]"
    assert lines[1].startswith("[tool result clock/now: CLOCK-7f3a ")
    assert lines[2].startswith("Mock answer to: CLOCK-7f3a ")


def test_ask_with_an_unknown_mcp_server_names_the_configured_ones():
    done = run("ask", "--mcp-server", "weather", "rain?", MCP_SERVERS=json.dumps(CLOCK))
    assert done.returncode == 1
    assert done.stderr.strip() == "messenger: unknown MCP server 'weather'; configured servers: clock"


def test_a_bad_mcp_servers_setting_is_one_line_and_keeps_the_token_secret():
    bad = {"docs": {"url": "ftp://docs.example.com/mcp", "token": "tok-secret-42"}}
    done = run("ask", "hi", MCP_SERVERS=json.dumps(bad))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("messenger: MCP_SERVERS: docs")
    assert "tok-secret-42" not in done.stderr


def test_a_budget_cap_ends_ask_in_one_line_with_exit_code_1():
    done = run("ask", "hi", BUDGET_PER_REQUEST_USD="0.0000001", MODEL_PRICES='{"mock-1": [1, 1]}')
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("messenger: this request could cost up to $")
    assert "BUDGET_PER_REQUEST_USD" in done.stderr and done.stdout == ""


def test_an_invalid_argument_is_one_line_in_our_words_not_pydantics():
    done = run("ask", "hi", "--temperature", "9")
    assert done.returncode == 2
    assert done.stderr == "messenger: invalid temperature: Input should be less than or equal to 2\n"
    done = run("ask", "   ")
    assert done.stderr == "messenger: invalid message: message is empty\n"


def test_unreachable_redis_is_one_line_with_exit_code_1_and_no_password():
    port = free_port()  # nothing listens here
    done = run("jobs", REDIS_URL=f"redis://app:hunter2@127.0.0.1:{port}/0")
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"messenger: cannot reach Redis at redis://***@127.0.0.1:{port}/0: ")
    assert "hunter2" not in done.stderr


def test_help_documents_the_exit_codes():
    done = run("--help")
    assert done.returncode == 0
    assert "exit codes:" in done.stdout and "130" in done.stdout


def test_the_cli_does_not_load_the_worker_package():
    """Only the embedded runtime starts a worker (lazily); the CLI itself never imports worker/."""
    probe = "import sys, messenger.cli; print(sorted(m for m in sys.modules if m.split('.')[0] == 'worker'))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
