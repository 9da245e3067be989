"""The TTFT figure's provider: tests/openai_server.OpenAIServer in a process of its own, like a real one.

`python -m bench.openai_proc SCRIPT_JSON` (the fields of openai_server.Script, e.g.
`{"reply": "…", "first_token_delay": 0.03, "token_delay": 0.03}`) prints the base URL on one line,
then serves until stdin closes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from openai_server import OpenAIServer


def main(script: dict) -> None:
    server = OpenAIServer()
    server.script(**script)
    server.start()
    try:
        print(server.base_url, flush=True)
        sys.stdin.read()
    finally:
        server.stop()


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
