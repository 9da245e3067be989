"""MCP prompts from template files, and completions for their arguments and for job ids.

Every `*.toml` file in PROMPTS_DIR (unset: the repo's `prompts/`) is one prompt: its arguments, a
`template` with `${name}` placeholders (string.Template: no attribute access, and `{}` in a prompt
needs no escaping), and variables whose values depend on who asks: `[variables]` for everyone,
`[clients."<clientInfo.name>"]` and `[tenants.<tenant>]` over them. Files are read once at start; a
broken one is left out with one WARNING naming it and its problem, and the others are served.
"""

from __future__ import annotations

import logging
import re
import string
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.prompts.base import Message, Prompt, PromptArgument, UserMessage
from mcp.shared.exceptions import MCPError
from mcp_types import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    Completion,
    CompletionArgument,
    CompletionContext,
    PromptReference,
    ResourceTemplateReference,
)
from redis.exceptions import RedisError

from messenger.calls import current_tenant, tenant_from, unavailable
from messenger.runtime import Runtime
from shared.errors import SettingsError

log = logging.getLogger("messenger.prompts")

SHIPPED_DIR = Path(__file__).resolve().parents[1] / "prompts"
NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
ARGUMENT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
FILE_MAX_BYTES = 256 * 1024  # a prompt file is a template, not a data set
ARGUMENT_MAX_CHARS = 100_000  # as a message to send_message_to_ai
COMPLETION_MAX_VALUES = 100  # the spec's cap on completion/complete values
JOB_ID_ARGUMENT = "job_id"  # completes with the caller's own recent jobs, wherever it appears
JOB_TEMPLATE = "job://{job_id}"
FILE_KEYS = {"name", "title", "description", "template", "arguments", "variables", "clients", "tenants"}
ARGUMENT_KEYS = {"description", "required", "default", "choices"}


class PromptFileError(ValueError):
    """What is wrong with one prompt file, in a line."""


@dataclass(frozen=True)
class Argument:
    name: str
    description: str | None = None
    required: bool = False
    default: str = ""
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class PromptFile:
    """One prompt: its arguments, its template and its per-client and per-tenant variables."""

    name: str
    template: string.Template
    path: Path
    title: str | None = None
    description: str | None = None
    arguments: tuple[Argument, ...] = ()
    variables: dict[str, str] = field(default_factory=dict)
    clients: dict[str, dict[str, str]] = field(default_factory=dict)  # casefolded client name ->
    tenants: dict[str, dict[str, str]] = field(default_factory=dict)

    def argument(self, name: str) -> Argument | None:
        return next((a for a in self.arguments if a.name == name), None)

    def render(self, given: dict[str, Any] | None, client: str | None, tenant: str) -> str:
        """The prompt text for these arguments, as this client and tenant see it; MCPError if an
        argument is missing, unknown, too long or not one of its choices."""
        given = dict(given or {})
        unknown = sorted(set(given) - {a.name for a in self.arguments})
        if unknown:
            raise _invalid(f"prompt {self.name!r} has no argument {unknown[0][:64]!r}")
        values = dict(self.variables)
        values.update(self.clients.get((client or "").casefold(), {}))
        values.update(self.tenants.get(tenant, {}))
        for argument in self.arguments:
            values[argument.name] = _argument_value(self.name, argument, given.get(argument.name))
        return self.template.substitute(values)


def _argument_value(prompt: str, argument: Argument, value: Any) -> str:
    if value is None or value == "":
        if argument.required:
            raise _invalid(f"prompt {prompt!r} needs argument {argument.name!r}")
        return argument.default
    if not isinstance(value, str):
        raise _invalid(f"prompt {prompt!r}: argument {argument.name!r} must be a string")
    if len(value) > ARGUMENT_MAX_CHARS:
        raise _invalid(
            f"prompt {prompt!r}: argument {argument.name!r} is {len(value)} characters; "
            f"at most {ARGUMENT_MAX_CHARS}"
        )
    if argument.choices and value not in argument.choices:
        raise _invalid(
            f"prompt {prompt!r}: argument {argument.name!r} must be one of {', '.join(argument.choices)}"
        )
    return value


def _invalid(message: str) -> MCPError:
    return MCPError(code=INVALID_PARAMS, message=message)


def parse(path: Path) -> PromptFile:
    """One prompt file, or PromptFileError saying what is wrong with it."""
    if path.stat().st_size > FILE_MAX_BYTES:
        raise PromptFileError(f"larger than {FILE_MAX_BYTES // 1024} KiB")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise PromptFileError("not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise PromptFileError(f"not TOML: {e}") from None
    _only(data, FILE_KEYS, "key")
    name = _text(data.get("name", path.stem), "name")
    if not NAME.fullmatch(name):
        raise PromptFileError(f"name {name[:80]!r} is not 1-64 letters, digits, '.', '_' or '-'")
    arguments = tuple(_argument(n, spec) for n, spec in _table(data, "arguments").items())
    variables = {k: _text(v, f"variables.{k}") for k, v in _table(data, "variables").items()}
    clients = {
        c.casefold(): _overrides(t, variables, f"clients.{c}") for c, t in _table(data, "clients").items()
    }
    tenants = {t: _overrides(v, variables, f"tenants.{t}") for t, v in _table(data, "tenants").items()}
    template = string.Template(_text(data.get("template"), "template"))
    if not template.is_valid():
        raise PromptFileError("template has a '$' that is not ${name} or $$ (write $$ for a dollar sign)")
    clash = sorted(set(variables) & {a.name for a in arguments})
    if clash:
        raise PromptFileError(f"{clash[0]!r} is both an argument and a variable")
    unknown = sorted(set(template.get_identifiers()) - set(variables) - {a.name for a in arguments})
    if unknown:
        raise PromptFileError(f"template uses ${{{unknown[0]}}}, which is neither an argument nor a variable")
    return PromptFile(
        name=name, template=template, path=path, title=_optional_text(data, "title"),
        description=_optional_text(data, "description"), arguments=arguments, variables=variables,
        clients=clients, tenants=tenants,
    )  # fmt: skip


def _argument(name: str, spec: Any) -> Argument:
    if not ARGUMENT_NAME.fullmatch(name):
        raise PromptFileError(
            f"argument name {name[:80]!r} is not a letter or _ followed by letters, digits, _"
        )
    if not isinstance(spec, dict):
        raise PromptFileError(f"arguments.{name} must be a table")
    _only(spec, ARGUMENT_KEYS, f"key of arguments.{name}")
    required = spec.get("required", False)
    if not isinstance(required, bool):
        raise PromptFileError(f"arguments.{name}.required must be true or false")
    choices = spec.get("choices", [])
    if not isinstance(choices, list) or not all(isinstance(c, str) and c for c in choices):
        raise PromptFileError(f"arguments.{name}.choices must be a list of non-empty strings")
    default = _text(spec.get("default", ""), f"arguments.{name}.default")
    if default and choices and default not in choices:
        raise PromptFileError(f"arguments.{name}.default is not one of its choices")
    return Argument(name, _optional_text(spec, "description"), required, default, tuple(choices))


def _overrides(table: Any, variables: dict[str, str], where: str) -> dict[str, str]:
    if not isinstance(table, dict):
        raise PromptFileError(f"{where} must be a table")
    unknown = sorted(set(table) - set(variables))
    if unknown:
        raise PromptFileError(f"{where}.{unknown[0]} is not declared in [variables]")
    return {k: _text(v, f"{where}.{k}") for k, v in table.items()}


def _table(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise PromptFileError(f"{key} must be a table")
    return value


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise PromptFileError(f"{where} must be a string" if value is not None else f"{where} is missing")
    return value


def _optional_text(data: dict[str, Any], key: str) -> str | None:
    return _text(data[key], key) if key in data else None


def _only(data: dict[str, Any], allowed: set[str], what: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise PromptFileError(f"unknown {what} {unknown[0][:80]!r} (allowed: {', '.join(sorted(allowed))})")


def load(directory: Path | None) -> list[PromptFile]:
    """Every good prompt file of `directory` (unset: the shipped one), by file name; each broken file
    is logged once as a WARNING and left out. PROMPTS_DIR naming no directory stops start-up."""
    if directory is None:
        directory = SHIPPED_DIR
        if not directory.is_dir():
            return []  # installed without the repo's prompts/: no prompts
    elif not directory.is_dir():
        raise SettingsError(f"PROMPTS_DIR: {directory} is not a directory")
    prompts: dict[str, PromptFile] = {}
    for path in sorted(directory.glob("*.toml")):
        try:
            prompt = parse(path)
            if prompt.name in prompts:
                raise PromptFileError(
                    f"prompt {prompt.name!r} is already defined by {prompts[prompt.name].path.name}"
                )
        except (PromptFileError, OSError) as e:
            log.warning("prompt file %s left out: %s", path, e)
            continue
        prompts[prompt.name] = prompt
    return list(prompts.values())


class FilePrompt(Prompt):
    """A PromptFile as the SDK serves it: rendered for the caller's client name and tenant."""

    source: Any = None  # the PromptFile
    settings: Any = None  # whose keys say which tenant is calling

    @classmethod
    def of(cls, source: PromptFile, runtime: Runtime) -> FilePrompt:
        arguments = [
            PromptArgument(name=a.name, description=a.description, required=a.required)
            for a in source.arguments
        ]
        return cls(
            name=source.name, title=source.title, description=source.description or "", arguments=arguments,
            fn=_never_called, context_kwarg=None, icons=None, source=source, settings=runtime.settings,
        )  # fmt: skip

    async def render(self, arguments: dict[str, Any] | None, context: Context) -> list[Message]:  # pyright: ignore[reportIncompatibleMethodOverride]
        params = context.request_context.session.client_params
        client = params.client_info.name if params is not None else None
        tenant = tenant_from(context.headers, self.settings).name
        return [UserMessage(self.source.render(arguments, client, tenant))]


def _never_called() -> str:
    raise AssertionError("FilePrompt.render renders the template itself")


def add_prompts(mcp: MCPServer, runtime: Runtime) -> list[PromptFile]:
    """Serve the prompt files, and completions for their arguments and for `job://{job_id}`."""
    prompts = load(runtime.settings.prompts_dir)
    for prompt in prompts:
        mcp.add_prompt(FilePrompt.of(prompt, runtime))
    by_name = {p.name: p for p in prompts}

    async def known_prompt(ctx: Any, call_next) -> Any:
        """An unknown prompt name is the caller's mistake, in one line (the SDK logs it as a crash)."""
        if getattr(ctx, "method", None) == "prompts/get":
            name = (getattr(ctx, "params", None) or {}).get("name")
            if isinstance(name, str) and name not in by_name:
                raise _invalid(f"no prompt named {name[:80]!r}; prompts/list names them")
        return await call_next(ctx)

    mcp.middleware.append(known_prompt)

    @mcp.completion()
    async def complete(
        ref: PromptReference | ResourceTemplateReference,
        argument: CompletionArgument,
        _: CompletionContext | None,
    ) -> Completion:
        """Choices of a prompt argument, and the caller's own recent job ids for a `job_id`."""
        prefix = argument.value[:200]
        if isinstance(ref, PromptReference):
            prompt = by_name.get(ref.name)
            declared = prompt.argument(argument.name) if prompt else None
            if declared is not None and declared.choices:
                return _completion([c for c in declared.choices if c.startswith(prefix)])
            if declared is None or argument.name != JOB_ID_ARGUMENT:
                return _completion([])
        elif ref.uri != JOB_TEMPLATE or argument.name != JOB_ID_ARGUMENT:
            return _completion([])
        return _completion(await _own_job_ids(runtime, prefix))

    return prompts


async def _own_job_ids(runtime: Runtime, prefix: str) -> list[str]:
    """The caller's recent job ids starting with `prefix`, newest first (the operator: everyone's)."""
    reader = current_tenant(runtime.settings).reader
    try:
        return [job_id for job_id in await runtime.jobs.recent_ids(reader) if job_id.startswith(prefix)]
    except (RedisError, OSError) as e:
        raise MCPError(code=INTERNAL_ERROR, message=unavailable(e, runtime.settings).message) from None


def _completion(values: list[str]) -> Completion:
    return Completion(
        values=values[:COMPLETION_MAX_VALUES], total=len(values), has_more=len(values) > COMPLETION_MAX_VALUES
    )
