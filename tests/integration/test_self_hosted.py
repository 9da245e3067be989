"""Self-hosted OpenAI-compatible servers (vLLM, llama.cpp's server, Ollama) with the settings the
README gives their users: AI_PROVIDER=openai, OPENAI_BASE_URL, OPENAI_DEFAULT_MODEL in the style of
name each server uses, and no OPENAI_API_KEY.

Each test runs a real `worker` process on a real Redis against the OpenAI-compatible test server
(over HTTP, in the byte format llama-server streams), and looks at what an MCP client gets from the
messenger's tools: the answer, the usage and whether it was estimated, the cost, check_health and
list_models.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass

import anyio
import pytest
from mcp import Client
from openai_server import words

from messenger.runtime import open_runtime
from messenger.server import build_server
from shared.settings import load_settings

QUESTION = "Which server answers this question?"
REPLY = "A model on your own machine, served over the OpenAI API, token by token."
REPORTED = (29, 13)  # what the server says it counted: neither the words sent nor the words streamed


@dataclass(frozen=True)
class Peer:
    name: str
    model: str  # OPENAI_DEFAULT_MODEL, as the server names the model it serves


VLLM = Peer("vllm", "meta-llama/Llama-3.1-8B-Instruct")  # `vllm serve <HF repo id>`
LLAMA_CPP = Peer("llama.cpp", "qwen2.5-7b-instruct-q4_k_m.gguf")  # `llama-server -m <file>.gguf`
OLLAMA = Peer("ollama", "llama3.2:3b")  # `ollama pull llama3.2:3b`
# llama-cpp-python's server (`python -m llama_cpp.server --model_alias gemma3-270m`) ignores
# stream_options.include_usage: its streams carry no usage (research/real-peers.md §2A).
LLAMA_CPP_PYTHON = Peer("llama-cpp-python", "gemma3-270m")

PEERS = [pytest.param(p, id=p.name) for p in (VLLM, LLAMA_CPP, OLLAMA)]


def start_worker(workers, redis_url, server, peer: Peer, **env: str) -> None:
    """A worker with a self-hosted server's settings; `process_env` leaves out any OPENAI_API_KEY."""
    workers.start(
        redis_url,
        AI_PROVIDER="openai",
        OPENAI_BASE_URL=server.base_url,
        OPENAI_DEFAULT_MODEL=peer.model,
        **env,
    )


@contextlib.asynccontextmanager
async def messenger(redis_url, server, peer: Peer):
    """A messenger on the same Redis with the same provider settings, and an MCP client on it."""
    settings = load_settings(
        redis_url=redis_url,
        ai_provider="openai",
        openai_base_url=server.base_url,
        openai_default_model=peer.model,
    )
    with anyio.fail_after(40):
        async with open_runtime(settings) as runtime, Client(build_server(runtime)) as client:
            yield client


async def call(client: Client, tool: str, **arguments) -> dict:
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, result.content
    return result.structured_content or json.loads(result.content[0].text)


async def ask(client: Client, **arguments) -> tuple[dict, str]:
    """send_message_to_ai: its result, and the text the progress notifications carried."""
    streamed: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        streamed.append(message or "")

    result = await client.call_tool("send_message_to_ai", arguments, progress_callback=on_progress)
    assert not result.is_error, result.content
    return result.structured_content, "".join(streamed)


def done_event(redis_server, job_id: str) -> dict:
    events = [json.loads(f[b"event"]) for _, f in redis_server.client().xrange(f"mcpq:stream:{job_id}")]
    assert events[-1]["type"] == "done", events[-1]
    return events[-1]


@pytest.mark.parametrize("peer", PEERS)
async def test_the_whole_answer_and_the_servers_own_usage_with_no_key(
    peer, redis_url, redis_server, workers, openai_server, clean_env
):
    openai_server.script(reply=REPLY, usage=REPORTED, models=[peer.model])
    start_worker(workers, redis_url, openai_server, peer)
    async with messenger(redis_url, openai_server, peer) as client:
        result, streamed = await ask(client, message=QUESTION)

    assert result["status"] == "completed", result["error"]
    assert result["aiResponse"] == REPLY
    assert streamed == REPLY, "the progress notifications carry the whole answer"
    assert result["model"] == peer.model
    prompt, completion = REPORTED
    assert result["usage"] == {
        "promptTokens": prompt,
        "completionTokens": completion,
        "totalTokens": prompt + completion,
        "estimatedCost": None,  # a local model has no known price
        "estimated": False,
    }
    assert done_event(redis_server, result["jobId"])["usage"] == {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "estimated": False,
    }
    (sent,) = openai_server.chat_requests
    assert sent.body["model"] == peer.model
    assert sent.body["messages"] == [{"role": "user", "content": QUESTION}]
    assert sent.body["stream_options"] == {"include_usage": True}
    assert {r.headers["authorization"] for r in openai_server.requests} == {"Bearer not-needed"}


async def test_a_key_when_set_is_sent_instead_of_the_placeholder(
    redis_url, workers, openai_server, clean_env
):
    key = "sk-local-0123456789"  # e.g. `vllm serve ... --api-key sk-local-0123456789`
    openai_server.script(reply=REPLY, expected_api_key=key)  # any other key gets 401
    start_worker(workers, redis_url, openai_server, VLLM, OPENAI_API_KEY=key)
    async with messenger(redis_url, openai_server, VLLM) as client:
        result, _ = await ask(client, message=QUESTION)
        health = await call(client, "check_health")
    assert result["status"] == "completed", result["error"]
    assert result["aiResponse"] == REPLY
    assert health["provider_reachable"] is True
    assert {r.path for r in openai_server.requests} == {"/v1/models", "/v1/chat/completions"}
    assert {r.headers["authorization"] for r in openai_server.requests} == {f"Bearer {key}"}


async def test_a_server_that_sends_no_usage_gets_an_estimate_that_says_so(
    redis_url, redis_server, workers, openai_server, clean_env
):
    peer = LLAMA_CPP_PYTHON
    openai_server.script(reply=REPLY, include_usage=False, models=[peer.model])
    start_worker(workers, redis_url, openai_server, peer, MODEL_PRICES=json.dumps({peer.model: [1.0, 2.0]}))
    async with messenger(redis_url, openai_server, peer) as client:
        result, streamed = await ask(client, message=QUESTION)

    assert result["status"] == "completed", result["error"]
    assert result["aiResponse"] == streamed == REPLY
    (sent,) = openai_server.chat_requests
    assert sent.body["stream_options"] == {"include_usage": True}, "asked, but the server did not answer"
    # the README's rule: the prompt at about four characters a token, one token per streamed piece
    prompt, completion = len(QUESTION) // 4 + 1, len(words(REPLY))
    assert openai_server.streams[0].sent_tokens == completion
    assert result["usage"] == {
        "promptTokens": prompt,
        "completionTokens": completion,
        "totalTokens": prompt + completion,
        "estimatedCost": pytest.approx((prompt * 1.0 + completion * 2.0) / 1e6, abs=1e-8),
        "estimated": True,
    }
    assert done_event(redis_server, result["jobId"])["usage"] == {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "estimated": True,
    }


@pytest.mark.parametrize(
    ("peer", "server", "reachable"),
    [
        pytest.param(VLLM, {}, True, id="vllm-lists-models"),
        pytest.param(LLAMA_CPP, {}, True, id="llama.cpp-lists-models"),
        pytest.param(OLLAMA, {}, True, id="ollama-lists-models"),
        pytest.param(LLAMA_CPP, {"models_endpoint": False}, True, id="no-v1-models"),
        pytest.param(LLAMA_CPP, {"expected_api_key": "sk-wanted"}, False, id="key-refused"),
    ],
)
async def test_check_health_and_list_models(
    peer, server, reachable, redis_url, workers, openai_server, clean_env
):
    openai_server.script(models=[peer.model], **server)
    start_worker(workers, redis_url, openai_server, peer)
    async with messenger(redis_url, openai_server, peer) as client:
        health = await call(client, "check_health")
        listed = await call(client, "list_models")

    (asked,) = openai_server.requests  # the worker's start-up check, and nothing else
    assert (asked.method, asked.path) == ("GET", "/v1/models")
    assert health["provider"] == "openai"
    assert health["provider_reachable"] is reachable
    assert len(health["workers"]) == 1
    if reachable:
        assert health["status"] == "ok"
        assert "provider_error" not in health
    else:
        assert health["status"] == "degraded"
        assert "OPENAI_API_KEY" in health["provider_error"]
    assert listed["provider"] == "openai"
    assert listed["default_model"] == peer.model
    # only what the server serves: no OpenAI models it does not have
    assert listed["models"] == [
        {
            "id": peer.model,
            "default": True,
            "input_usd_per_mtok": None,
            "output_usd_per_mtok": None,
            "price_source": None,
        }
    ]


# Ollama runs GGUF files straight from Hugging Face under a name with both: `ollama pull hf.co/<repo>:<quant>`
HF_ON_OLLAMA = "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M"


async def test_a_model_name_with_slashes_and_a_colon_goes_through_end_to_end(
    redis_url, workers, openai_server, clean_env
):
    openai_server.script(reply=REPLY, usage=REPORTED, models=[OLLAMA.model, HF_ON_OLLAMA])
    start_worker(
        workers, redis_url, openai_server, OLLAMA, MODEL_PRICES=json.dumps({HF_ON_OLLAMA: [1.0, 2.0]})
    )
    async with messenger(redis_url, openai_server, OLLAMA) as client:
        named, _ = await ask(client, message=QUESTION, model=HF_ON_OLLAMA)  # per request
        await call(client, "configure_ai_model", default_model=HF_ON_OLLAMA)  # as every worker's default
        by_default, _ = await ask(client, message=QUESTION)
        stats = await call(client, "get_ai_usage_stats")

    prompt, completion = REPORTED
    for result in (named, by_default):
        assert result["status"] == "completed", result["error"]
        assert result["aiResponse"] == REPLY
        assert result["model"] == HF_ON_OLLAMA
        assert result["usage"]["estimatedCost"] == pytest.approx((prompt * 1.0 + completion * 2.0) / 1e6)
    assert [r.body["model"] for r in openai_server.chat_requests] == [HF_ON_OLLAMA, HF_ON_OLLAMA]
    assert set(stats["models"]) == {HF_ON_OLLAMA}
    assert stats["models"][HF_ON_OLLAMA]["requests"] == 2


async def test_a_broken_unicode_escape_from_the_server_becomes_a_replacement_character(
    redis_url, redis_server, workers, openai_server, clean_env
):
    """A server that streams a lone surrogate (`\\ud800` in its JSON, which decodes to no
    character UTF-8 can carry): the answer completes with U+FFFD in its place, in the result and in
    the progress, instead of a job that fails with "unable to serialize result"."""
    openai_server.script(reply="caf\ud800 au lait \U0001f600", models=[LLAMA_CPP.model])
    start_worker(workers, redis_url, openai_server, LLAMA_CPP)
    async with messenger(redis_url, openai_server, LLAMA_CPP) as client:
        result, streamed = await ask(client, message=QUESTION)
    assert result["status"] == "completed", result["error"]
    assert result["aiResponse"] == streamed == "caf\ufffd au lait \U0001f600"
    assert "Traceback" not in workers.logs()
