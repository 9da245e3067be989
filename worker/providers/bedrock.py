"""AWS Bedrock through the Converse stream API (`bedrock-runtime` `converse_stream`, boto3).

boto3 is synchronous, so the blocking parts — the `converse_stream` call and every read of the event
stream — run in worker threads (`asyncio.to_thread`); the event loop keeps serving other jobs. When
the generator is closed early (cancellation, timeout) the event stream is closed, which drops the
HTTP connection so Bedrock stops generating.

Region and credentials come from boto3's default chain (AWS_REGION / AWS_DEFAULT_REGION, AWS_ACCESS_KEY_ID,
AWS_PROFILE, SSO, instance roles…). botocore retries the initial call itself (standard mode,
RETRY_ATTEMPTS + 1 attempts); failures map to ProviderError, `retryable` for throttling and 5xx.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncGenerator
from typing import Any

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    ReadTimeoutError,
)

from shared.events import TokenUsage
from worker.providers.base import (
    ModelCall,
    Provider,
    ProviderError,
    StreamEnd,
    ToolCall,
    ToolSpec,
    estimate_usage,
)

_END: dict[str, Any] = {}  # next()'s default once the stream ends; compared by identity
_RETRYABLE = {
    "throttlingexception",
    "serviceunavailableexception",
    "internalserverexception",
    "modelnotreadyexception",
    "modelstreamerrorexception",
    "modeltimeoutexception",
}
_CREDENTIALS = {"accessdeniedexception", "unrecognizedclientexception", "expiredtokenexception"}
_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "content_filtered": "content_filter",
    "guardrail_intervened": "content_filter",
    "tool_use": "tool_calls",
}
_NO_OUTPUT = "(no output)"  # an empty tool result would be an empty text block, which Bedrock rejects
_KEY_ID = re.compile(r"\b(AKIA|ASIA)[A-Z0-9]{12,}\b")
_CHECK_CREDENTIALS = (
    "check AWS credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or the instance role) "
    "and that they may call bedrock:InvokeModelWithResponseStream for this model"
)


def to_converse(messages: list[dict[str, Any]]) -> tuple[list[dict[str, str]], list[dict[str, Any]]]:
    """Chat messages → (Converse `system` blocks, Converse `messages`).

    Converse requires alternating roles, so same-role turns merge (tool results are user blocks, and
    join the user text after them), and it rejects empty text blocks, so none are sent.
    """
    system: list[dict[str, str]] = []
    turns: list[dict[str, Any]] = []
    for m in messages:
        text = m.get("content") or ""
        if m["role"] == "system":
            if text:
                system.append({"text": text})
            continue
        if m["role"] == "tool":
            result: dict[str, Any] = {
                "toolUseId": m.get("tool_call_id") or "",
                "content": [{"text": text or _NO_OUTPUT}],
            }
            if text.startswith("Error:"):  # how the job words a failed tool
                result["status"] = "error"
            role, blocks = "user", [{"toolResult": result}]
        else:
            role = "assistant" if m["role"] == "assistant" else "user"
            blocks = [{"text": text}] if text else []
            blocks += [_tool_use(c) for c in m.get("tool_calls") or []]
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    return system, turns


def _tool_use(tool_call: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI tool call as a Converse toolUse block; Converse wants the input as an object."""
    function = tool_call.get("function") or {}
    try:
        arguments = json.loads(function.get("arguments") or "{}")
    except (ValueError, RecursionError):
        arguments = None
    return {
        "toolUse": {
            "toolUseId": tool_call.get("id") or "",
            "name": function.get("name") or "",
            "input": arguments if isinstance(arguments, dict) else {},
        }
    }


def tool_config(tools: tuple[ToolSpec, ...], turns: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The request's `toolConfig`, or None when it needs none.

    Bedrock refuses toolUse/toolResult blocks without a toolConfig, so a call that offers no tools
    but carries a tool round in its history declares the tools that history used.
    """
    specs = [_tool_spec(t.name, t.description, t.parameters) for t in tools]
    if not specs:
        used = (block["toolUse"]["name"] for turn in turns for block in turn["content"] if "toolUse" in block)
        specs = [_tool_spec(name, "", {"type": "object"}) for name in dict.fromkeys(used) if name]
    return {"tools": specs} if specs else None


def _tool_spec(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": name, "inputSchema": {"json": schema}}
    if description:  # optional, but Bedrock rejects an empty one
        spec["description"] = description
    return {"toolSpec": spec}


def converse_request(call: ModelCall) -> dict[str, Any]:
    """The Converse API's arguments for one model call."""
    system, messages = to_converse(call.messages)
    request: dict[str, Any] = {
        "modelId": call.model,
        "messages": messages,
        "inferenceConfig": {"maxTokens": call.max_tokens, "temperature": call.temperature},
    }
    if system:
        request["system"] = system
    tools = tool_config(call.tools, messages)
    if tools:
        request["toolConfig"] = tools
    return request


class BedrockProvider(Provider):
    name = "bedrock"

    def __init__(
        self,
        *,
        region: str | None = None,
        timeout: float = 300,
        max_retries: int = 3,
        client: Any = None,
        session: Any = None,
    ):
        """`session`: the boto3 Session whose credentials the client signs with (masked in errors);
        a test passes its own stubbed `client` with the session that made it."""
        import boto3

        self.session = session or boto3.Session()
        if client is None:
            from botocore.config import Config

            config = Config(
                retries={"max_attempts": max_retries + 1, "mode": "standard"},
                read_timeout=timeout,
                connect_timeout=min(timeout, 10),
            )
            try:
                client = self.session.client("bedrock-runtime", region_name=region, config=config)
            except NoRegionError:
                raise ProviderError(
                    "AI_PROVIDER=bedrock needs an AWS region: set AWS_REGION (or AWS_DEFAULT_REGION, "
                    "or a region in your AWS profile)"
                ) from None
        self.client = client

    @property
    def region(self) -> str:
        return self.client.meta.region_name

    async def stream(self, call: ModelCall) -> AsyncGenerator[str | StreamEnd, None]:
        try:
            response = await asyncio.to_thread(self.client.converse_stream, **converse_request(call))
        except (ClientError, BotoCoreError) as e:
            raise self._explain(e, call.model) from None

        events = response["stream"]
        usage: TokenUsage | None = None
        stop_reason: str | None = None
        pieces = 0
        calls: dict[int, dict[str, Any]] = {}  # toolUse blocks by contentBlockIndex
        open_blocks: set[int] = set()
        try:
            iterator = iter(events)
            while True:
                event = await asyncio.to_thread(next, iterator, _END)
                if event is _END:
                    break
                if "contentBlockStart" in event:
                    start = event["contentBlockStart"]
                    tool = start.get("start", {}).get("toolUse")
                    if tool:
                        index = start.get("contentBlockIndex", 0)
                        calls[index] = {
                            "id": tool.get("toolUseId", ""),
                            "name": tool.get("name", ""),
                            "input": [],
                        }
                        open_blocks.add(index)
                elif "contentBlockDelta" in event:
                    block = event["contentBlockDelta"]
                    delta = block.get("delta", {})
                    index = block.get("contentBlockIndex", 0)
                    if delta.get("text"):
                        pieces += 1
                        yield delta["text"]
                    elif "toolUse" in delta and index in open_blocks:
                        pieces += 1  # output tokens too, for the estimate
                        calls[index]["input"].append(delta["toolUse"].get("input", ""))
                elif "contentBlockStop" in event:
                    open_blocks.discard(event["contentBlockStop"].get("contentBlockIndex", 0))
                elif "messageStop" in event:
                    stop_reason = event["messageStop"].get("stopReason")
                elif "metadata" in event and "usage" in event["metadata"]:
                    u = event["metadata"]["usage"]
                    prompt, completion = u.get("inputTokens", 0), u.get("outputTokens", 0)
                    usage = TokenUsage(
                        prompt_tokens=prompt,
                        completion_tokens=completion,
                        total_tokens=u.get("totalTokens", prompt + completion),
                    )
        except (ClientError, BotoCoreError) as e:
            raise self._explain(e, call.model) from None
        finally:
            close = getattr(events, "close", None)
            if close is not None:
                close()  # early close (cancellation) drops the connection; harmless after the end

        extra: dict[str, object] = {"stop_reason": stop_reason} if stop_reason else {}
        if usage is None:
            usage = estimate_usage(call.messages, pieces)
        finish = _FINISH.get(stop_reason, stop_reason) if stop_reason else None
        tool_calls = tuple(
            ToolCall(
                id=c["id"] or f"call_{uuid.uuid4().hex[:12]}",
                name=c["name"],
                arguments="".join(c["input"]) or "{}",
            )
            for _, c in sorted(calls.items())
        )
        yield StreamEnd(
            model=call.model, finish_reason=finish, usage=usage, tool_calls=tool_calls, extra=extra
        )

    async def aclose(self) -> None:
        close = getattr(self.client, "close", None)
        if close is not None:
            close()

    def _explain(self, e: Exception, model: str) -> ProviderError:
        where = f"Bedrock in {self.region}"
        if isinstance(e, NoCredentialsError | PartialCredentialsError):
            return ProviderError(
                "no usable AWS credentials were found for Bedrock; set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or run where an IAM role is available"
            )
        if isinstance(e, ReadTimeoutError | ConnectTimeoutError):
            return ProviderError(f"{where} did not answer in time", retryable=True)
        if isinstance(e, EndpointConnectionError):
            return ProviderError(
                f"cannot connect to {where}; check AWS_REGION and the network", retryable=True
            )
        if not isinstance(e, ClientError):
            return ProviderError(f"the Bedrock call failed: {self._redact(str(e))}")

        error = e.response.get("Error", {})
        code = str(error.get("Code", "") or "")
        detail = self._redact(str(error.get("Message", "") or ""))
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        key = code.lower()  # errors inside the event stream are spelled throttlingException etc.
        label = f"{code[:1].upper()}{code[1:]}" if code else "an error"
        if key in _RETRYABLE or (status is not None and status >= 500):
            return ProviderError(
                f"{where} is busy or failing ({label}); the job will be retried. {detail}".strip(),
                retryable=True,
                status=status,
            )
        if key in _CREDENTIALS:
            msg = f"{where} refused the request ({label}); {_CHECK_CREDENTIALS}. {detail}"
        elif key == "resourcenotfoundexception":
            msg = (
                f"model {model!r} was not found in {where} ({label}); check the model id and region. {detail}"
            )
        elif key == "validationexception":
            msg = f"{where} rejected the request for model {model!r} ({label}): {detail}"
        else:
            msg = f"{where} refused the request ({label}). {detail}"
        return ProviderError(msg.strip(), status=status)

    def _redact(self, text: str) -> str:
        for secret in self._secrets():
            text = text.replace(secret, "***")
        return _KEY_ID.sub("***", text)

    def _secrets(self) -> list[str]:
        try:  # the client's own credentials, whatever part of the chain they came from
            creds = self.session.get_credentials().get_frozen_credentials()
        except Exception:
            return []
        return [s for s in (creds.secret_key, creds.token, creds.access_key) if s]
