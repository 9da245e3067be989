"""Any OpenAI-compatible chat-completions server, through the official `openai` SDK.

One AsyncOpenAI client per worker (its connection pool is reused by every job). Usage comes from
the final stream chunk (`stream_options.include_usage`); servers that do not send it get an
estimate, flagged `estimated` in the usage (see base.estimate_usage).

The chat call goes through the SDK's own `post` (its auth, headers, retries, errors and SSE
decoding) with the request body built here and the chunks read as the server's JSON: the typed
`chat.completions.create` walked the whole request through its param transforms (1.2 ms a call on a
2-core box) and built a model per chunk (0.3 ms to the first token), all before the first token.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator, Iterator
from contextlib import aclosing
from typing import Any

import openai
from openai import AsyncOpenAI, AsyncStream
from openai._streaming import ServerSentEvent, SSEDecoder
from openai.types.chat import ChatCompletion

from shared.events import TokenUsage
from shared.logs import redact
from worker.capacity import retry_after_seconds
from worker.providers.base import ModelCall, Provider, ProviderError, StreamEnd, ToolCall, estimate_usage
from worker.providers.openai_http import LeanChat, Unreached, lean_url

NO_KEY_PLACEHOLDER = "not-needed"  # self-hosted servers (vLLM, llama.cpp, Ollama) accept any key
CHAT = "/chat/completions"
RETRY_DELAY, MAX_RETRY_DELAY = 0.5, 8.0  # the SDK's first wait before a retry, and its longest
_AS_SENT: dict[str, Any] = {"security": {"bearer_auth": True}}  # the options `create` passes (its auth)
_Chunks = AsyncStream[object]  # each chunk as the server's JSON (the SDK builds no model for it)


class _Client(AsyncOpenAI):
    """The SDK's client, minus its own retries of a 429: the worker's shared cool-down
    (worker/capacity.py) is the one retry, for every worker at once, not RETRY_ATTEMPTS per call
    multiplied by every job in flight. 5xx, timeouts and connection errors are still the SDK's."""

    def _should_retry(self, response) -> bool:  # pinned: tests/worker/test_capacity_provider.py
        return response.status_code != 429 and super()._should_retry(response)

    def _make_sse_decoder(self) -> SSEDecoder:
        return _Lenient()


class _Lenient(SSEDecoder):
    """The SDK's SSE decoder, with a broken UTF-8 byte as U+FFFD (as the lean path and
    shared.tokens.well_formed do): the SDK's strict decode raised, and the job failed and retried."""

    def _decode_lines(self, lines: Iterator[bytes]) -> Iterator[ServerSentEvent]:
        for raw_line in lines:
            if sse := self.decode(raw_line.decode("utf-8", "replace")):
                yield sse


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
        self.lean: LeanChat | None = (
            None  # a plain-HTTP server's chat stream (worker/providers/openai_http.py)
        )
        if (where := lean_url(base_url)) is not None:
            headers = {k: v for k, v in self.client.default_headers.items() if isinstance(v, str)}
            headers["Authorization"] = f"Bearer {api_key or NO_KEY_PLACEHOLDER}"
            self.lean = LeanChat(where, headers, self.client._make_status_error_from_response, timeout)

    async def stream(self, call: ModelCall) -> AsyncGenerator[str | StreamEnd, None]:
        usage: TokenUsage | None = None
        finish_reason: str | None = None
        model = call.model
        pieces = 0
        calls: dict[int, dict[str, str]] = {}  # tool calls arrive in pieces, keyed by index
        try:
            async with aclosing(self._chunks(call)) as chunks:
                async for chunk in chunks:
                    if not isinstance(chunk, dict):
                        continue
                    model = _text(chunk.get("model")) or model
                    if isinstance(counted := chunk.get("usage"), dict):
                        usage = TokenUsage(
                            prompt_tokens=counted.get("prompt_tokens") or 0,
                            completion_tokens=counted.get("completion_tokens") or 0,
                            total_tokens=counted.get("total_tokens") or 0,
                        )
                    for choice in _dicts(chunk.get("choices")):
                        finish_reason = _text(choice.get("finish_reason")) or finish_reason
                        delta = choice.get("delta")
                        if not isinstance(delta, dict):
                            continue
                        if content := _text(delta.get("content")):
                            pieces += 1
                            yield content
                        for part in _dicts(delta.get("tool_calls")):
                            index = part.get("index")
                            tool = calls.setdefault(
                                index if isinstance(index, int) else 0,
                                {"id": "", "name": "", "arguments": ""},
                            )
                            tool["id"] = _text(part.get("id")) or tool["id"]
                            if isinstance(function := part.get("function"), dict):
                                tool["name"] += _text(function.get("name"))
                                tool["arguments"] += _text(function.get("arguments"))
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

    async def _chunks(self, call: ModelCall) -> AsyncGenerator[Any, None]:
        """The server's chunks as JSON: over the lean connection when the server is plain HTTP (if it
        answers at all), else through the SDK."""
        body = request_body(call)
        client = self.client
        if self.lean is not None:
            try:
                async with aclosing(self.lean.stream(body)) as chunks:
                    async for chunk in chunks:
                        yield chunk
                return
            except Unreached:  # no answer at all: the SDK's way, with its retries
                pass
            except openai.APIStatusError as e:  # one the SDK retries (5xx…): its retries, one spent
                if client.max_retries < 1 or not client._should_retry(e.response):
                    raise
                await asyncio.sleep(
                    min(retry_after_seconds(e.response.headers) or RETRY_DELAY, MAX_RETRY_DELAY)
                )
                client = client.with_options(max_retries=client.max_retries - 1)
        stream = await client.post(
            CHAT, body=body, cast_to=ChatCompletion, stream=True, stream_cls=_Chunks,
            options=_AS_SENT,  # type: ignore[arg-type]
        )  # fmt: skip
        async with stream:
            async for chunk in stream:
                yield chunk

    async def check(self) -> str | None:
        try:
            await self.client.models.list()
        except openai.APIError as e:
            if isinstance(e, openai.NotFoundError):
                return None  # reachable; some compatible servers have no /models
            return self._explain(e, "").message
        return None

    async def aclose(self) -> None:
        if self.lean is not None:
            self.lean.close()
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


def request_body(call: ModelCall) -> dict[str, Any]:
    """The JSON `chat.completions.create(..., stream=True)` sends for this call."""
    body: dict[str, Any] = {
        "model": call.model, "messages": call.messages, "temperature": call.temperature,
        "max_tokens": call.max_tokens, "stream": True, "stream_options": {"include_usage": True},
    }  # fmt: skip
    if call.tools:
        body["tools"] = [
            {
                "type": "function",
                "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
            }
            for t in call.tools
        ]
    return body


def _text(value: object) -> str:
    """A chunk's string field; anything else (null, junk) as empty."""
    return value if isinstance(value, str) else ""


def _dicts(value: object) -> list[dict[str, Any]]:
    """A chunk's list of objects (choices, tool call pieces); anything else as none."""
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []
