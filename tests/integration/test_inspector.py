"""The MCP Inspector's command-line mode (an independent TypeScript client) against the messenger,
over stdio and streamable HTTP.

Node 22 and the Inspector come from the npm registry, installed once into `.cache/node` by the
`node_tools` session fixture (tests/integration/node_tools.py), which fails, never skips, without them.
"""

from __future__ import annotations

import json
import sys

from mcp_helpers import ROOT, messenger_env, running_messengers

from worker.providers.mock import mock_reply

MESSENGER = [sys.executable, "-m", "messenger.cli", "serve"]


def whole_answer(prompt: str) -> str:
    return "".join(mock_reply([{"role": "user", "content": prompt}]))


def tool_names(listing: dict) -> set[str]:
    return {tool["name"] for tool in listing["result"]["tools"]}


def answer_of(called: dict) -> dict:
    result = called["result"]
    assert result.get("isError") is not True, result
    assert json.loads(result["content"][0]["text"]) == result["structuredContent"]
    return result["structuredContent"]


def test_inspector_lists_and_calls_over_stdio(node_tools):
    serve = ["-e", "REDIS_URL=memory://", "-e", "AI_PROVIDER=mock", "-e", "MOCK_TOKEN_DELAY_MS=1"]
    serve += ["--cwd", str(ROOT), *MESSENGER]
    listing = node_tools.inspector(*serve, "--method", "tools/list")
    called = node_tools.inspector(
        *serve,
        "--method",
        "tools/call",
        "--tool-name",
        "send_message_to_ai",
        "--tool-arg",
        "message=hello inspector",
    )
    assert {"send_message_to_ai", "submit_message", "get_job", "wait_for_job"} <= tool_names(listing)
    answer = answer_of(called)
    assert answer["status"] == "completed"
    assert answer["aiResponse"] == whole_answer("hello inspector")


def test_inspector_lists_and_calls_over_http_with_an_api_key(node_tools, tmp_path):
    env = messenger_env("memory://", MCP_API_KEY="tok1", MOCK_TOKEN_DELAY_MS="1")
    with running_messengers(tmp_path) as messengers:
        url = messengers.http(env).url
        auth = ["--header", "Authorization: Bearer tok1"]
        listing = node_tools.inspector(url, *auth, "--method", "tools/list")
        called = node_tools.inspector(
            url, *auth, "--protocol-era", "modern", "--method", "tools/call",
            "--tool-name", "send_message_to_ai", "--tool-args-json", json.dumps({"message": "over http"}),
        )  # fmt: skip
    assert "send_message_to_ai" in tool_names(listing)
    send = next(t for t in listing["result"]["tools"] if t["name"] == "send_message_to_ai")
    assert send["execution"] == {"taskSupport": "optional"}  # the Inspector speaks 2025-11-25 by default
    answer = answer_of(called)
    assert answer["status"] == "completed"
    assert answer["aiResponse"] == whole_answer("over http")
