"""docker-compose.yml: valid offline (no Docker engine here), and its command lines really serve.

The services' own `command` and `environment` are run as processes against the test's Redis, so a
broken command or variable in the compose file fails here.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import compose_spec
import pytest
from mcp import Client
from processes import ROOT, process_env
from redis_server import free_port

COMPOSE = ROOT / "docker-compose.yml"


@pytest.fixture(scope="module")
def services() -> dict:
    spec = compose_spec.PyCompose.from_yaml(COMPOSE.read_text())
    spec.validate()
    return spec.to_dict()["services"]


def test_the_compose_file_is_valid_and_has_the_three_roles(services):
    assert set(services) == {"redis", "messenger", "worker"}
    assert "healthcheck" in services["redis"] and services["redis"]["volumes"]
    assert services["messenger"]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["worker"]["deploy"]["replicas"] >= 1
    # Docker must not SIGKILL a worker before its own graceful shutdown (30 s by default) is over
    assert int(services["worker"]["stop_grace_period"].rstrip("s")) > 30


def test_one_image_is_built_once_and_every_service_restarts_after_a_crash(services):
    assert all(s.get("restart") == "unless-stopped" for s in services.values()), services
    built = [name for name, s in services.items() if "build" in s]
    assert built == ["messenger"], "one build: the worker runs the messenger's image"
    image = services["messenger"]["image"]
    assert services["messenger"]["pull_policy"] == "build", "a local tag is never looked up on a registry"
    assert services["worker"]["image"] == image and services["worker"]["pull_policy"] == "never"


def test_the_docker_context_leaves_out_secrets_and_local_environments_but_not_what_the_image_copies():
    ignored = [
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]  # fmt: skip
    assert {".env", ".venv", ".git"} <= set(ignored)
    copied = [
        part for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line.startswith("COPY ") and "--from" not in line for part in line.split()[1:-1]
    ]  # fmt: skip
    assert {"pyproject.toml", "uv.lock", "LICENSE", "shared", "worker", "messenger"} <= set(copied)
    assert not set(copied) & set(ignored), "the Dockerfile copies something the context leaves out"
    assert all((ROOT / path).exists() for path in copied)


def test_the_messenger_port_is_published_on_loopback_only(services):
    """No key is set by default, so the port must not reach other machines (README "Security")."""
    ports = services["messenger"]["ports"]
    assert ports and all(str(p).startswith("127.0.0.1:") for p in ports), ports


def test_a_misspelled_option_is_rejected():
    with pytest.raises(ValueError, match="portz"):
        compose_spec.PyCompose.from_yaml(COMPOSE.read_text().replace("ports:", "portz:"))


def _command(service: dict, redis_url: str, port: int) -> tuple[list[str], dict[str, str]]:
    """The service's command line and environment, pointed at the test's Redis and port."""
    command = [str(x) for x in service["command"]]
    command[0] = shutil.which(command[0]) or command[0]  # the console script in this environment
    command = [str(port) if x == "8000" else x for x in command]
    env = process_env(redis_url, **{k: str(v) for k, v in service.get("environment", {}).items()})
    env["REDIS_URL"] = redis_url
    return command, env


@pytest.fixture
def compose_stack(services, redis_url, tmp_path: Path):
    """Two workers and a messenger, started with the compose file's command lines; yields the port."""
    port = free_port()
    procs = []
    try:
        for name in ("worker", "worker", "messenger"):
            command, env = _command(services[name], redis_url, port)
            procs.append(
                subprocess.Popen(
                    command, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
            )
        health = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    health = json.loads(response.read())
                    if len(health.get("workers", [])) == 2:
                        break
            except OSError:
                pass
            time.sleep(0.2)
        assert health is not None and len(health["workers"]) == 2, health
        yield port
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(20)


async def test_the_compose_command_lines_serve_a_request(compose_stack):
    async with Client(f"http://127.0.0.1:{compose_stack}/mcp") as client:
        result = await client.call_tool("send_message_to_ai", {"message": "from compose"})
    assert result.structured_content["status"] == "completed"
    assert result.structured_content["aiResponse"].startswith("Mock answer to: from compose")
