"""What the `messenger` and `worker` command lines share: a wrong argument is one line (not
argparse's usage block) and exit 2, `--version` reads the installed package only when asked, and a
count or interval must be above zero (`--concurrency 0` is refused, not read as the default)."""

from __future__ import annotations

import argparse
from typing import NoReturn


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog.split()[0]} --help)\n")


class Version(argparse.Action):
    def __init__(self, option_strings, dest=argparse.SUPPRESS, **kwargs):
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit", **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> NoReturn:
        from importlib.metadata import version

        parser.exit(0, f"{parser.prog} {version('mcp-queue')}\n")


def positive(kind):
    """An argparse type: a number of `kind` above zero."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not {'a whole' if kind is int else 'a'} number"
            ) from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{text} must be above 0")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its own messages
    return parse
