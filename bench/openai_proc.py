"""Figure 4's provider: tests/openai_server.OpenAIServer in a process of its own, like a real one.

`python -m bench.openai_proc REPLY TOKEN_DELAY_S` prints the base URL on one line, then serves
until stdin closes.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from openai_server import OpenAIServer


def main(reply: str, token_delay: float) -> None:
    server = OpenAIServer()
    server.script(reply=reply, token_delay=token_delay)
    server.start()
    try:
        print(server.base_url, flush=True)
        sys.stdin.read()
    finally:
        server.stop()


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
