from node_tools import node_tools  # noqa: F401  (the session fixture: Node 22 and the TS MCP tools)
from openai_server import openai_server  # noqa: F401  (the fixture, shared with the other suite)
