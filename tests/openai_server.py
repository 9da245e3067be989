"""A small OpenAI-compatible chat-completions server for tests, over real HTTP on 127.0.0.1.

It streams the way OpenAI and llama.cpp's `llama-server` do (see research/real-peers.md §2):
`data: {chunk}\\n\\n` lines, the role delta first, one content delta per word, a chunk with the
finish_reason, then (when `stream_options.include_usage` is true) a chunk with `"choices":[]` and
`usage`, then `data: [DONE]`. It records every request it received and every stream the client
closed before the end, and each test scripts the reply, its pace and its failures with `script()`.

Uvicorn runs in a background thread with its own event loop, so a worker subprocess and the test
process both reach it the same way: over TCP.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

DEFAULT_REPLY = "Hello from the test server."

_ERRORS = {
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    503: ("server_error", None),
}


async def eventually(check: Callable[[], object], timeout: float = 10.0, interval: float = 0.02):
    """Poll `check` (sync or async) until it returns something truthy, and return that."""
    async with asyncio.timeout(timeout):
        while True:
            value = check()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value
            await asyncio.sleep(interval)


def words(text: str) -> list[str]:
    """The reply as the server streams it: one piece per word, each keeping its trailing space."""
    return [piece for piece in re.split(r"(?<=\s)(?=\S)", text) if piece]


@dataclass
class Received:
    """One request as the server saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: dict | None
    at: float = field(default_factory=time.monotonic)  # when it arrived (this process's monotonic clock)

    @property
    def api_key(self) -> str | None:
        auth = self.headers.get("authorization", "")
        return auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else None


@dataclass
class Script:
    """What the server answers with; every field can be changed by `OpenAIServer.script()`."""

    reply: str = DEFAULT_REPLY
    token_delay: float = 0.0  # seconds before each content chunk
    first_token_delay: float | None = (
        None  # before the first one instead (a model's prefill); None: token_delay
    )
    finish_delay: float = 0.0  # before the chunk with the finish_reason (a model decodes its end token too)
    status: int | None = None  # answer chat completions with this HTTP error instead
    failures: int | None = None  # answer only this many chat completions with `status`, then stream the reply
    error_message: str | None = None
    retry_after: float | str | None = None  # Retry-After header on an error answer (a str: sent as is)
    include_usage: bool = True  # False: behave like llama-cpp-python, which ignores include_usage
    usage: tuple[int, int] | None = None  # (prompt, completion) to report; default: counted words
    model: str | None = None  # the model name the chunks carry; default: the requested one
    expected_api_key: str | None = None  # 401 on every endpoint when the bearer token differs
    models: list[str] = field(default_factory=lambda: ["gpt-4o-mini", "test-model"])
    # Tool use, as a model does it: while a request offers tools and has had fewer than `tool_rounds`
    # tool turns, answer with these (function name, JSON arguments) calls, streamed in pieces after
    # `tool_preamble`; once tool results are in, answer `reply` followed by every result of the turn.
    tool_calls: list[tuple[str, str]] = field(default_factory=list)
    tool_rounds: int = 1
    tool_preamble: str = ""
    answer_gate: threading.Event | None = None  # an answer to tool results streams once it is set
    models_endpoint: bool = True  # False: GET /v1/models answers 404, like a server that has no such route
    broken_models: tuple[str, ...] = ()  # chat completions for these models always answer HTTP 500
    # A provider's limits, enforced the way providers do, with 429 + Retry-After: `rpm` over a sliding
    # window of `window` seconds (rpm 600 over 5 s allows 50 in any 5 s, plus `burst`); `tpm` the same
    # over prompt words + completion tokens; `concurrency` calls at once (a self-hosted server's slots).
    rpm: int | None = None
    tpm: int | None = None
    window: float = 60.0
    burst: int = 0
    concurrency: int | None = None


@dataclass
class StreamRecord:
    request_index: int
    sent_tokens: int = 0
    finished: bool = False  # `data: [DONE]` was sent
    disconnected: bool = False  # the client went away before `data: [DONE]`


class OpenAIServer:
    def __init__(self) -> None:
        self._script = Script()
        self.requests: list[Received] = []
        self.streams: list[StreamRecord] = []
        self.failed = 0  # chat completions answered with the scripted error status
        self.sent_429s = 0  # every 429 sent: scripted ones and the limits' (rpm, tpm, concurrency)
        self.limited: list[str] = []  # which limit each limits' 429 was for
        self.active = 0  # chat completions being answered now
        self.max_active = 0  # the most answered at once
        self._admitted: list[tuple[float, int]] = []  # (monotonic time, tokens) of calls the limits let in
        self.answered_at: list[float] = []  # when each call the limits let in arrived (monotonic)
        self._lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # -- what tests use ---------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def script(self, **changes) -> Script:
        """Change what the server answers, e.g. `script(reply="a b c", token_delay=0.05)`."""
        for name, value in changes.items():
            if not hasattr(self._script, name):
                raise TypeError(f"Script has no field {name!r}")
            setattr(self._script, name, value)
        return self._script

    @property
    def chat_requests(self) -> list[Received]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    @property
    def disconnects(self) -> list[StreamRecord]:
        """Streams the client closed before the server sent `data: [DONE]`."""
        return [s for s in self.streams if s.disconnected]

    async def wait_until(self, condition: Callable[[], object], timeout: float = 10.0) -> None:
        """Poll `condition` (the server lives in another thread) until it is true."""
        await eventually(condition, timeout)

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        config = uvicorn.Config(
            self._app(),
            host="127.0.0.1",
            port=0,
            http="h11",
            lifespan="off",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="openai-test-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the OpenAI test server did not start")
            time.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(10)
            if self._thread.is_alive():
                self._server.force_exit = True
                self._thread.join(5)

    # -- the HTTP side ----------------------------------------------------------------------------

    def _app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
            ],
            # a client killed while it sent its request (the fault tests SIGKILL workers): nothing to answer
            exception_handlers={ClientDisconnect: lambda _request, _exc: Response(status_code=499)},
        )

    async def _record(self, request: Request) -> tuple[int, Received]:
        raw = await request.body()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        received = Received(request.method, request.url.path, dict(request.headers), body)
        with self._lock:
            self.requests.append(received)
            return len(self.requests) - 1, received

    def _auth_error(self, received: Received) -> Response | None:
        expected = self._script.expected_api_key
        if expected is None or received.api_key == expected:
            return None
        # Some OpenAI-compatible proxies echo the key they were given; the client must redact it.
        return _error(401, f"Incorrect API key provided: {received.api_key}.")

    def _take_failure(self, script: Script) -> bool:
        """Whether this chat completion gets the scripted error (always, or while `failures` lasts)."""
        with self._lock:
            if script.failures is not None and self.failed >= script.failures:
                return False
            self.failed += 1
            return True

    async def _models(self, request: Request) -> Response:
        _, received = await self._record(request)
        if not self._script.models_endpoint:
            return Response("Not Found", status_code=404, media_type="text/plain")
        if (denied := self._auth_error(received)) is not None:
            return denied
        now = int(time.time())
        data = [
            {"id": m, "object": "model", "created": now, "owned_by": "tests"} for m in self._script.models
        ]
        return JSONResponse({"object": "list", "data": data})

    async def _chat(self, request: Request) -> Response:
        index, received = await self._record(request)
        if (denied := self._auth_error(received)) is not None:
            return denied
        script = self._script
        body = received.body or {}
        model = body.get("model", "")
        if model in script.broken_models:
            with self._lock:
                self.failed += 1
            return _error(500, _default_error(500, model))
        if script.status is not None and self._take_failure(script):
            message = script.error_message or _default_error(script.status, model)
            after = script.retry_after
            headers = (
                {"retry-after": after if isinstance(after, str) else f"{after:g}"}
                if after is not None
                else None
            )
            with self._lock:
                self.sent_429s += script.status == 429
            return _error(script.status, message, headers)
        if (limited := self._over_limits(script, body)) is not None:
            return limited
        try:
            return await self._answer(script, body, index)
        except BaseException:
            self._finished()
            raise

    def _over_limits(self, script: Script, body: dict) -> Response | None:
        """A 429 with Retry-After when this call is over a limit; else it counts as admitted (and active)."""
        prompt_words = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
        tokens = prompt_words + len(words(script.reply))
        now = time.monotonic()
        with self._lock:
            self._admitted = [(t, n) for t, n in self._admitted if t > now - script.window]
            share = script.window / 60
            checks = [
                ("concurrency", script.concurrency is not None and self.active >= script.concurrency, 1.0)
            ]
            if script.rpm is not None and self._admitted:
                over = len(self._admitted) >= script.rpm * share + script.burst
                checks.append(("rpm", over, self._admitted[0][0] + script.window - now))
            if script.tpm is not None and self._admitted:
                over = sum(n for _, n in self._admitted) + tokens > script.tpm * share + script.burst
                checks.append(("tpm", over, self._admitted[0][0] + script.window - now))
            for limit, over, wait in checks:
                if over:
                    self.sent_429s += 1
                    self.limited.append(limit)
                    message = f"Rate limit reached for {limit}. Please try again in {wait:.3f}s."
                    return _error(429, message, {"retry-after-ms": str(max(1, round(wait * 1000)))})
            self._admitted.append((now, tokens))
            self.answered_at.append(now)
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        return None

    def _finished(self) -> None:
        with self._lock:
            self.active -= 1

    async def _answer(self, script: Script, body: dict, index: int) -> Response:
        model = body.get("model", "")

        messages = body.get("messages", [])
        tool_turns = sum(1 for m in messages if m.get("role") == "assistant" and m.get("tool_calls"))
        calls = script.tool_calls if body.get("tools") and tool_turns < script.tool_rounds else []
        results = [str(m.get("content")) for m in _last_tool_turn(messages)]
        reply = script.reply + "".join(f" {r}" for r in results)
        tokens = words(script.tool_preamble if calls else reply)
        finish = "tool_calls" if calls else "stop"
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
        if isinstance(max_tokens, int) and len(tokens) > max_tokens:
            tokens, finish = tokens[:max_tokens], "length"
        prompt_words = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
        prompt, completion = script.usage or (prompt_words, len(tokens))
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        base = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "created": int(time.time()),
            "model": script.model or model,
            "system_fingerprint": "fp_tests",
        }

        if not body.get("stream"):
            self._finished()
            return JSONResponse(
                {
                    **base,
                    "object": "chat.completion",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "".join(tokens)},
                            "logprobs": None,
                            "finish_reason": finish,
                        }
                    ],
                    "usage": usage,
                }
            )

        include_usage = bool((body.get("stream_options") or {}).get("include_usage")) and script.include_usage
        record = StreamRecord(index)
        with self._lock:
            self.streams.append(record)

        def chunk(delta: dict, finish_reason: str | None = None) -> str:
            data = {
                **base,
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
            }
            if include_usage:
                data["usage"] = None  # OpenAI sends usage:null on every chunk but the last
            return _sse(data)

        async def events():
            try:
                async for event in stream():
                    yield event
            finally:
                self._finished()

        async def stream():
            gate = script.answer_gate if results else None
            while gate is not None and not await asyncio.to_thread(gate.wait, 0.5):
                pass  # (set from the test's thread; waited in pieces, so a cancel ends the wait)
            yield chunk({"role": "assistant", "content": ""})
            for i, token in enumerate(tokens):
                first = script.first_token_delay if i == 0 else None
                if delay := first if first is not None else script.token_delay:
                    await asyncio.sleep(delay)
                yield chunk({"content": token})
                record.sent_tokens += 1
            for i, (name, arguments) in enumerate(calls):  # id and name first, then the arguments in pieces
                head = {"index": i, "id": f"call_{index}_{i}", "type": "function"}
                yield chunk({"tool_calls": [{**head, "function": {"name": name, "arguments": ""}}]})
                for start in range(0, len(arguments), 5):
                    piece = {"index": i, "function": {"arguments": arguments[start : start + 5]}}
                    yield chunk({"tool_calls": [piece]})
            if script.finish_delay:
                await asyncio.sleep(script.finish_delay)
            yield chunk({}, finish)
            if include_usage:
                yield _sse({**base, "object": "chat.completion.chunk", "choices": [], "usage": usage})
            record.finished = True
            yield "data: [DONE]\n\n"

        return _TrackedStream(record, events(), media_type="text/event-stream")


class _TrackedStream(StreamingResponse):
    """Notes when the client goes away before the stream's end (uvicorn sends http.disconnect)."""

    def __init__(self, record: StreamRecord, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.record = record

    async def listen_for_disconnect(self, receive) -> None:
        await super().listen_for_disconnect(receive)
        if not self.record.finished:
            self.record.disconnected = True


def _last_tool_turn(messages: list[dict]) -> list[dict]:
    """The tool results at the end of a conversation (the answers to the model's last calls)."""
    turn: list[dict] = []
    for m in reversed(messages):
        if m.get("role") != "tool":
            break
        turn.insert(0, m)
    return turn


def _sse(data: dict) -> str:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


def _default_error(status: int, model: str) -> str:
    return {
        404: f"The model `{model}` does not exist or you do not have access to it.",
        429: "Rate limit reached for requests. Please try again in 1s.",
        500: "The server had an error while processing your request. Sorry about that!",
    }.get(status, f"test server error {status}")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    kind, code = _ERRORS.get(status, ("invalid_request_error", None))
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


@pytest.fixture
def openai_server() -> Iterator[OpenAIServer]:
    """A fresh OpenAI-compatible server on a free port; `.base_url` ends in /v1."""
    server = OpenAIServer()
    server.start()
    yield server
    server.stop()
