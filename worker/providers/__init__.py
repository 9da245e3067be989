"""Model providers behind one small interface.

`make_provider` builds one provider of a kind (AI_PROVIDER's, from its usual settings);
`make_providers` builds what a worker calls: the default provider plus every other provider a model
may name by prefix — `mock/mock-1`, `bedrock/…`, `openai/…` (from the same settings), or
`<name>/<model>` for a PROVIDERS entry — so one job's fallback chain (MODEL_FALLBACKS) may cross
providers. A prefix that names the default provider's own kind stays part of the model's name
(OpenRouter's `openai/gpt-4o` on AI_PROVIDER=openai), so existing model names keep their meaning.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import replace

from shared.settings import PROVIDER_KINDS, ProviderConfig, Settings
from worker.providers.base import ModelCall, Provider, ProviderError, StreamEnd, ToolCall, ToolSpec

__all__ = [
    "ModelCall",
    "Provider",
    "ProviderError",
    "Providers",
    "StreamEnd",
    "ToolCall",
    "ToolSpec",
    "make_provider",
    "make_providers",
]


BEDROCK_MISSING = (
    "AWS Bedrock needs boto3, which is not installed: pip install 'mcp-queue[bedrock]' "
    "(from a clone: uv sync --extra bedrock)"
)


def make_provider(settings: Settings) -> Provider:
    if settings.ai_provider == "mock":
        from worker.providers.mock import MockProvider

        return MockProvider(token_delay_ms=settings.mock_token_delay_ms)
    if settings.ai_provider == "openai":
        from worker.providers.openai import OpenAIProvider

        key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
        return OpenAIProvider(
            api_key=key,
            base_url=settings.openai_base_url,
            timeout=settings.job_timeout_seconds,
            max_retries=settings.retry_attempts,
        )
    if settings.ai_provider == "bedrock":
        try:
            from worker.providers.bedrock import BedrockProvider  # imports boto3 only when chosen
        except ModuleNotFoundError as e:
            if (e.name or "").partition(".")[0] not in ("boto3", "botocore"):
                raise
            raise ProviderError(BEDROCK_MISSING) from None

        return BedrockProvider(
            region=settings.aws_region,  # None: boto3's chain (AWS_DEFAULT_REGION, the profile)
            timeout=settings.job_timeout_seconds,
            max_retries=settings.retry_attempts,
        )
    raise ProviderError(
        f"AI_PROVIDER={settings.ai_provider} is not available in this version; use mock, openai or bedrock"
    )


def _from_config(name: str, config: ProviderConfig, settings: Settings) -> Provider:
    """A PROVIDERS entry's provider; a bad entry stops the worker's start with one line."""
    if config.kind == "openai":
        from worker.providers.openai import OpenAIProvider

        if config.api_key_env and not config.key() and not config.base_url:
            raise ProviderError(
                f"PROVIDERS: {name!r} reads its key from {config.api_key_env}, which is not set"
            )
        key = f"PROVIDERS {name!r} {'api_key_env ' + config.api_key_env if config.api_key_env else 'api_key'}"
        return OpenAIProvider(
            api_key=config.key(), base_url=config.base_url,
            timeout=settings.job_timeout_seconds, max_retries=settings.retry_attempts,
            settings=(f"PROVIDERS {name!r} base_url", key),
        )  # fmt: skip
    return make_provider(
        settings.model_copy(update={"ai_provider": config.kind, "aws_region": config.region})
    )


class Providers(Provider):
    """The default provider and the ones a model names by prefix; the StreamEnd of a prefixed model
    names the model with its prefix, so a result says which provider answered."""

    def __init__(self, settings: Settings, default: Provider):
        self.settings = settings
        self.default = default
        self.name = default.name
        self.named = {name: _from_config(name, c, settings) for name, c in settings.providers.items()}
        for model in {m for chain in settings.model_fallbacks.values() for m in chain}:
            if (name := self.route(model)[0]) is not None:
                self._provider(name)  # a fallback that cannot be called stops the start, not a job later

    def route(self, model: str) -> tuple[str | None, str]:
        """(the provider's name, the model for it); (None, model) for the default provider."""
        prefix, _, rest = model.partition("/")
        if rest and (
            prefix in self.named or (prefix in PROVIDER_KINDS and prefix != self.settings.ai_provider)
        ):
            return prefix, rest
        return None, model

    def _provider(self, name: str) -> Provider:
        if name not in self.named:  # a built-in kind, from its usual settings, on first use
            self.named[name] = make_provider(self.settings.model_copy(update={"ai_provider": name}))
        return self.named[name]

    def stream(self, call: ModelCall) -> AsyncGenerator[str | StreamEnd, None]:
        name, model = self.route(call.model)
        if name is None:  # the default provider's own stream: no layer to pass each token through
            return self.default.stream(call)
        return self._renamed(name, self._provider(name).stream(replace(call, model=model)))

    @staticmethod
    async def _renamed(
        name: str, stream: AsyncGenerator[str | StreamEnd, None]
    ) -> AsyncGenerator[str | StreamEnd, None]:
        async with aclosing(stream) as pieces:
            async for piece in pieces:
                if isinstance(piece, StreamEnd):
                    piece = replace(piece, model=f"{name}/{piece.model}")
                yield piece

    async def check(self) -> str | None:
        return await self.default.check()

    async def aclose(self) -> None:
        for provider in (self.default, *self.named.values()):
            await provider.aclose()


def make_providers(settings: Settings) -> Providers:
    """What a worker calls: AI_PROVIDER's provider, and the others by prefix (see the module)."""
    return Providers(settings, make_provider(settings))
