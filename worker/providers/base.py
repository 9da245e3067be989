"""What every provider offers the job function: stream text pieces, then one StreamEnd.

Messages use the OpenAI chat format, tool turns included (an assistant message with `tool_calls`,
then one `{"role": "tool", "tool_call_id", "content"}` message per call); providers with another
wire format (Bedrock) convert. A model that wants tools run ends its stream with
`StreamEnd.tool_calls`; the job runs them and calls the provider again.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

from shared.errors import ProviderError as ProviderError  # re-exported: every provider raises it
from shared.events import TokenUsage
from shared.tokens import estimate_tokens


@dataclass(frozen=True)
class ToolSpec:
    """A function the model may call; `name` is already provider-safe ([A-Za-z0-9_-], at most 64)."""

    name: str
    description: str
    parameters: dict[str, Any]  # JSON Schema of the arguments object


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text as the model wrote it; may be invalid, the job reports that to the model


@dataclass(frozen=True)
class ModelCall:
    model: str
    messages: list[dict[str, Any]]
    temperature: float
    max_tokens: int
    tools: tuple[ToolSpec, ...] = ()


@dataclass(frozen=True)
class StreamEnd:
    model: str
    finish_reason: str | None
    usage: TokenUsage | None = None  # None: the provider did not report usage
    tool_calls: tuple[ToolCall, ...] = ()  # the model asks for these to be run before it goes on
    extra: dict[str, object] = field(default_factory=dict)


def estimate_usage(messages: list[dict[str, Any]], pieces: int) -> TokenUsage:
    """For servers that report no usage: the prompt at about four characters a token, the reply as
    one token per streamed piece (what vLLM, llama.cpp and Ollama send); flagged `estimated`."""
    prompt = estimate_tokens("".join(str(m.get("content") or "") for m in messages)) + 1
    return TokenUsage(
        prompt_tokens=prompt, completion_tokens=pieces, total_tokens=prompt + pieces, estimated=True
    )


class Provider(ABC):
    name: str

    @abstractmethod
    def stream(self, call: ModelCall) -> AsyncGenerator[str | StreamEnd, None]:
        """Yield text pieces as they arrive, then exactly one StreamEnd; raise ProviderError on failure."""

    async def check(self) -> str | None:
        """None if the provider can be reached, else what is wrong."""
        return None

    async def aclose(self) -> None:
        return None
