"""Model providers behind one small interface; `make_provider` picks the configured one."""

from __future__ import annotations

from shared.settings import Settings
from worker.providers.base import ModelCall, Provider, ProviderError, StreamEnd, ToolCall, ToolSpec

__all__ = ["ModelCall", "Provider", "ProviderError", "StreamEnd", "ToolCall", "ToolSpec", "make_provider"]


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
        from worker.providers.bedrock import BedrockProvider  # imports boto3 only when chosen

        return BedrockProvider(
            region=settings.aws_region,  # None: boto3's chain (AWS_DEFAULT_REGION, the profile)
            timeout=settings.job_timeout_seconds,
            max_retries=settings.retry_attempts,
        )
    raise ProviderError(
        f"AI_PROVIDER={settings.ai_provider} is not available in this version; use mock, openai or bedrock"
    )
