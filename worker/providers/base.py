"""What every provider offers the job function: stream text pieces, then one StreamEnd."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from shared.events import TokenUsage


@dataclass(frozen=True)
class ModelCall:
    model: str
    messages: list[dict[str, str]]
    temperature: float
    max_tokens: int


@dataclass(frozen=True)
class StreamEnd:
    model: str
    finish_reason: str | None
    usage: TokenUsage | None = None  # None: the provider did not report usage
    extra: dict[str, object] = field(default_factory=dict)


class ProviderError(Exception):
    """A provider failure, worded for the person who has to fix it (no secrets in the text)."""

    def __init__(self, message: str, *, retryable: bool = False, status: int | None = None):
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.status = status


class Provider(ABC):
    name: str

    @abstractmethod
    def stream(self, call: ModelCall) -> AsyncIterator[str | StreamEnd]:
        """Yield text pieces as they arrive, then exactly one StreamEnd; raise ProviderError on failure."""

    async def check(self) -> str | None:
        """None if the provider can be reached, else what is wrong."""
        return None

    async def aclose(self) -> None:
        return None
