"""Prompt files as an operator writes them, broken ones included: each bad file is left out with one
WARNING naming it and its problem, and the others are served."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from mcp.shared.exceptions import MCPError

from messenger.prompts import SHIPPED_DIR, PromptFileError, load, parse
from shared.errors import SettingsError

GOOD = """
description = "Say hello"
template = "Hello ${who}, ${greeting}"

[arguments.who]
required = true

[variables]
greeting = "welcome"

[clients."Claude-Code"]
greeting = "hi from the terminal"

[tenants.alice]
greeting = "hi alice"
"""

BROKEN = {
    "junk.toml": (b"\x00\xff\xfe garbage = = [", "not UTF-8 text"),
    "not_toml.toml": (b"template = 'unterminated", "not TOML"),
    "unknown_variable.toml": (b'template = "Hi ${nobody}"', "template uses ${nobody}, which is neither"),
    "no_template.toml": (b'description = "x"', "template is missing"),
    "bad_dollar.toml": (b'template = "costs $5"', "a '$' that is not ${name}"),
    "typo_key.toml": (b'template = "x"\n[argument.who]\nrequired = true', "unknown key 'argument'"),
    "bad_required.toml": (b'template = "${who}"\n[arguments.who]\nrequired = "yes"', "required must be true"),
    "client_typo.toml": (b'template = "${a}"\n[variables]\na = "1"\n[clients.x]\nb = "2"', "clients.x.b is not declared"),
    "clash.toml": (b'template = "${a}"\n[arguments.a]\n[variables]\na = "1"', "'a' is both an argument and a variable"),
    "bad_name.toml": (b'name = "has space"\ntemplate = "x"', "is not 1-64 letters"),
    "bad_choice.toml": (b'template = "${s}"\n[arguments.s]\nchoices = ["a"]\ndefault = "b"', "default is not one of"),
}  # fmt: skip


def test_a_good_file_renders_with_client_then_tenant_variables(tmp_path: Path):
    (tmp_path / "hello.toml").write_text(GOOD)
    prompt = parse(tmp_path / "hello.toml")
    assert prompt.name == "hello" and [a.name for a in prompt.arguments] == ["who"]
    assert prompt.render({"who": "Ann"}, "mcp", "bob") == "Hello Ann, welcome"
    assert prompt.render({"who": "Ann"}, "claude-code", "bob") == "Hello Ann, hi from the terminal"
    assert prompt.render({"who": "Ann"}, "claude-code", "alice") == "Hello Ann, hi alice"


def test_arguments_are_checked_in_one_line(tmp_path: Path):
    (tmp_path / "hello.toml").write_text(GOOD)
    prompt = parse(tmp_path / "hello.toml")
    cases = {
        "needs argument 'who'": {},
        "at most 100000": {"who": "x" * 10_000_000},
        "has no argument 'what'": {"who": "a", "what": "b"},
    }
    for expected, arguments in cases.items():
        with pytest.raises(MCPError) as raised:
            prompt.render(arguments, None, "operator")
        assert expected in str(raised.value) and "\n" not in str(raised.value)
    assert len(str(raised.value)) < 200
    # an argument is text, never a template: its own ${...} stays as it is
    assert prompt.render({"who": "${greeting}"}, None, "operator") == "Hello ${greeting}, welcome"


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_each_broken_file_is_refused_with_its_problem(tmp_path: Path, name: str):
    content, problem = BROKEN[name]
    (tmp_path / name).write_bytes(content)
    with pytest.raises(PromptFileError) as raised:
        parse(tmp_path / name)
    assert problem in str(raised.value)


def test_broken_files_are_each_one_warning_and_the_rest_are_served(tmp_path: Path, caplog):
    for name, (content, _) in BROKEN.items():
        (tmp_path / name).write_bytes(content)
    (tmp_path / "hello.toml").write_text(GOOD)
    (tmp_path / "zz_dup.toml").write_text('name = "hello"\ntemplate = "again"')
    (tmp_path / "huge.toml").write_bytes(b"# " + b"x" * 300_000)
    (tmp_path / "README.md").write_text("not a prompt")
    with caplog.at_level(logging.WARNING, logger="messenger.prompts"):
        prompts = load(tmp_path)
    assert [p.name for p in prompts] == ["hello"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == len(BROKEN) + 2
    for name in [*BROKEN, "zz_dup.toml", "huge.toml"]:
        assert sum(name in w for w in warnings) == 1, name
    assert all("\n" not in w for w in warnings)
    assert any("'hello' is already defined by hello.toml" in w for w in warnings)


def test_prompts_dir_that_is_not_a_directory_stops_start_up(tmp_path: Path):
    with pytest.raises(SettingsError, match=r"PROMPTS_DIR: .* is not a directory"):
        load(tmp_path / "missing")


def test_the_shipped_prompts_all_load(caplog):
    with caplog.at_level(logging.WARNING, logger="messenger.prompts"):
        prompts = load(None)
    assert not caplog.records
    assert [p.name for p in prompts] == ["delegate", "review_job", "summarize"]
    assert all(p.description for p in prompts) and SHIPPED_DIR.name == "prompts"
