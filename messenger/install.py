"""`messenger install claude-desktop`: put a working `mcp-queue` entry into Claude Desktop's config
(as the FastMCP CLI's `install` does). Claude Desktop does not use your shell's PATH, so the entry
holds absolute paths; every other entry and key in the file is kept as it was."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent  # a source checkout has pyproject.toml here


def desktop_config_path() -> Path:
    """Where Claude Desktop reads its config on this system."""
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "Claude" / "claude_desktop_config.json"
    if sys.platform == "win32":
        return Path(os.environ.get("APPDATA", Path.home())) / "Claude" / "claude_desktop_config.json"
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return config / "Claude" / "claude_desktop_config.json"


def server_entry(extra_env: dict[str, str]) -> dict:
    """`uv run --directory <checkout> messenger serve` from a checkout, else the installed command;
    REDIS_URL and AI_PROVIDER as set here (without REDIS_URL: embedded, the mock provider unless set)."""
    uv = shutil.which("uv")
    if (CHECKOUT / "pyproject.toml").is_file() and uv:
        command, args = str(Path(uv).resolve()), ["run", "--directory", str(CHECKOUT), "messenger", "serve"]
    else:
        command, args = str(Path(shutil.which("messenger") or sys.argv[0]).resolve()), ["serve"]
    env = {k: os.environ[k] for k in ("REDIS_URL", "AI_PROVIDER") if os.environ.get(k)}
    if "REDIS_URL" not in env:
        env.setdefault("AI_PROVIDER", "mock")
    return {"command": command, "args": args, "env": {**env, **extra_env}}


def install(args) -> int:
    """Merge the entry into the config file; one line on stderr and exit 2 if the file is not a
    JSON object (it is then left as it was)."""
    path = Path(args.config).expanduser() if args.config else desktop_config_path()
    extra = {}
    for pair in args.env:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            print(f"messenger: --env {pair!r} is not KEY=VALUE", file=sys.stderr)
            return 2
        extra[key] = value
    try:
        config = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    except (OSError, ValueError) as e:
        print(
            f"messenger: cannot read {path} as JSON ({e}); fix or move it, then run this again",
            file=sys.stderr,
        )
        return 2
    servers = config.get("mcpServers", {}) if isinstance(config, dict) else None
    if not isinstance(servers, dict):
        print(f"messenger: {path} is not a Claude Desktop config (no mcpServers object)", file=sys.stderr)
        return 2
    replaced = args.name in servers
    servers[args.name] = server_entry(extra)
    config["mcpServers"] = servers
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as out:
            json.dump(config, out, indent=2)
            out.write("\n")
        os.replace(out.name, path)  # whole or not at all: Claude Desktop never reads half a file
    except OSError as e:
        print(f"messenger: cannot write {path}: {e}", file=sys.stderr)
        return 1
    print(f"{'replaced' if replaced else 'added'} {args.name!r} in {path}; restart Claude Desktop")
    return 0
