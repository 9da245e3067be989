"""Server A: the MCP server that turns tool calls into queued jobs and relays their tokens."""
