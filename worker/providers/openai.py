"""Any OpenAI-compatible chat-completions server, through the official `openai` SDK.

One AsyncOpenAI client per worker (its connection pool is reused by every job). Usage comes from
the final stream chunk (`stream_options.include_usage`); servers that do not send it get an
estimate, flagged `estimated` in the usage (see base.estimate_usage).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator
from typing import Any

import openai
from openai import AsyncOpenAI

from shared.events import TokenUsage
from shared.logs import redact
from worker.capacity import retry_after_seconds
from worker.providers.base import ModelCall, Provider, ProviderError, StreamEnd, ToolCall, estimate_usage

NO_KEY_PLACEHOLDER = "not-needed"  # self-hosted servers (vLLM, llama.cpp, Ollama) accept any key


class _Client(AsyncOpenAI):
    """The SDK's client, minus its own retries of a 429: the worker's shared cool-down
    (worker/capacity.py) is the one retry, for every worker at once, not RETRY_ATTEMPTS per call
    multiplied by every job in flight. 5xx, timeouts and connection errors are still the SDK's."""

    def _should_retry(self, response) -> bool:  # pinned: tests/worker/test_capacity_provider.py
        return response.status_code != 429 and super()._should_retry(response)


class OpenAIProvider(Provider):
    name = "openai"

    def __init__(
        self, *, api_key: str | None, base_url: str | None, timeout: float, max_retries: int,
        settings: tuple[str, str] = ("OPENAI_BASE_URL", "OPENAI_API_KEY"),
    ) -> None:  # fmt: skip
        """`settings`: where the base URL and the key come from, named in the errors a person fixes."""
        self.where_set = settings
        if not api_key and not base_url:
            raise ProviderError(
                "AI_PROVIDER=openai needs OPENAI_API_KEY (or OPENAI_BASE_URL for a server that needs no key)"
            )
        self._secret = api_key or ""
        self.base_url = base_url
        self.client = _Client(
            api_key=api_key or NO_KEY_PLACEHOLDER, base_url=base_url, timeout=timeout, max_retries=max_retries
        )

    async def stream(self, call: ModelCall) -> AsyncGenerator[str | StreamEnd, None]:
        usage: TokenUsage | None = None
        finish_reason: str | None = None
        model = call.model
        pieces = 0
        calls: dict[int, dict[str, str]] = {}  # tool calls arrive in pieces, keyed by index
        options: dict[str, Any] = {}
        if call.tools:
            options["tools"] = [
                {
                    "type": "function",
                    "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
                }
                for t in call.tools
            ]
        try:
            stream = await self.client.chat.completions.create(
                model=call.model,
                messages=call.messages,  # type: ignore[arg-type]
                temperature=call.temperature,
                max_tokens=call.max_tokens,
                stream=True,
                stream_options={"include_usage": True},
                **options,
            )
            async with stream:
                async for chunk in stream:
                    model = chunk.model or model
                    if chunk.usage is not None:
                        usage = TokenUsage(
                            prompt_tokens=chunk.usage.prompt_tokens or 0,
                            completion_tokens=chunk.usage.completion_tokens or 0,
                            total_tokens=chunk.usage.total_tokens or 0,
                        )
                    for choice in chunk.choices:
                        if choice.finish_reason:
                            finish_reason = choice.finish_reason
                        if choice.delta and choice.delta.content:
                            pieces += 1
                            yield choice.delta.content
                        for delta in (choice.delta.tool_calls or []) if choice.delta else []:
                            part = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                            part["id"] = delta.id or part["id"]
                            if delta.function:
                                part["name"] += delta.function.name or ""
                                part["arguments"] += delta.function.arguments or ""
        except openai.APIError as e:
            raise self._explain(e, call.model) from None
        if usage is None:
            usage = estimate_usage(call.messages, pieces)
        tool_calls = tuple(
            ToolCall(
                id=c["id"] or f"call_{uuid.uuid4().hex[:12]}",
                name=c["name"],
                arguments=c["arguments"] or "{}",
            )
            for _, c in sorted(calls.items())
        )
        yield StreamEnd(model=model, finish_reason=finish_reason, usage=usage, tool_calls=tool_calls)

    async def check(self) -> str | None:
        try:
            await self.client.models.list()
        except openai.APIError as e:
            if isinstance(e, openai.NotFoundError):
                return None  # reachable; some compatible servers have no /models
            return self._explain(e, "").message
        return None

    async def aclose(self) -> None:
        await self.client.close()

    def _explain(self, e: openai.APIError, model: str) -> ProviderError:
        where = redact(self.base_url) if self.base_url else "the OpenAI API"
        detail = self._redact(getattr(e, "message", "") or str(e))
        if isinstance(e, openai.APITimeoutError):
            return ProviderError(f"the provider at {where} did not answer in time", retryable=True)
        if isinstance(e, openai.APIConnectionError):
            return ProviderError(
                f"cannot connect to the provider at {where}; check {self.where_set[0]}", retryable=True
            )
        status = getattr(e, "status_code", None)
        if isinstance(e, openai.AuthenticationError):
            msg = f"the provider rejected the API key (HTTP 401); check {self.where_set[1]}. {detail}"
        elif isinstance(e, openai.PermissionDeniedError):
            msg = f"the API key may not use this model or endpoint (HTTP 403). {detail}"
        elif isinstance(e, openai.NotFoundError):
            msg = f"model {model!r} was not found at {where} (HTTP 404). {detail}"
        elif isinstance(e, openai.RateLimitError):
            return ProviderError(
                f"the provider is rate limiting (HTTP 429). {detail}", retryable=True, status=429,
                retry_after=retry_after_seconds(e.response.headers),
            )  # fmt: skip
        elif status is not None and status >= 500:
            return ProviderError(
                f"the provider failed (HTTP {status}). {detail}", retryable=True, status=status
            )
        elif status is not None:
            msg = f"the provider refused the request (HTTP {status}). {detail}"
        else:
            msg = f"the provider stream failed: {detail}"
        return ProviderError(msg.strip(), status=status)

    def _redact(self, text: str) -> str:
        return redact(text, [self._secret])
