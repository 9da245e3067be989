"""mcp-queue's benchmark suite: `uv run python bench/run.py [--rounds N] [--quick]`."""
