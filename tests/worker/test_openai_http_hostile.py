"""The OpenAI provider's streams against raw asyncio servers: the lean plain-HTTP path (worker/providers/openai_http.py), and the SDK's where a test says so."""

import asyncio
import time

import pytest
from stream_helpers import collect, model_call

from worker.providers import ProviderError
from worker.providers.openai import OpenAIProvider
from worker.providers.openai_http import _events

KEY = "sk-test-0123456789abcdef"


async def serve(handler):
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"


async def test_a_server_that_never_answers_ends_in_the_providers_timeout():
    """timeout=1: the lean path ends in 'did not answer in time' (retryable) after about 1 s, as the
    SDK path does, not when arq's job timeout ends the job."""

    async def silent(reader, writer):
        await reader.read(65536)  # the request, then nothing
        await asyncio.sleep(3600)

    server, url = await serve(silent)
    provider = OpenAIProvider(api_key=KEY, base_url=url, timeout=1, max_retries=0)
    assert provider.lean is not None
    started = time.monotonic()
    try:
        async with asyncio.timeout(8):
            try:
                await collect(provider, model_call("m"))
            except ProviderError as e:
                assert "did not answer in time" in e.message and e.retryable
    except TimeoutError:
        raise AssertionError("no answer in 8 s with timeout=1: the lean path never times out") from None
    finally:
        await provider.aclose()
        server.close()
    assert time.monotonic() - started < 5


async def test_one_big_chunk_of_many_small_events_is_parsed_in_linear_time():
    """A server (or a buffering proxy before it) that writes 190 KB of events as one HTTP chunk."""
    event = b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n'
    n = 4_000  # ~190 KB (40,000: 65 s of CPU on this box)

    async def one_piece():
        yield event * n

    started = time.process_time()
    count = 0
    async for _ in _events(one_piece()):
        count += 1
    spent = time.process_time() - started
    assert count == n
    assert spent < 0.1, (
        f"{spent:.1f} s of CPU for {n} events in one chunk (the worker's loop is blocked meanwhile)"
    )


async def test_a_server_on_an_ipv6_address_gets_a_valid_host_and_its_errors_are_provider_errors():
    """http://[::1]:port/v1: the Host header and the error's request URL keep the brackets, so a
    garbled answer is the provider's error, not httpx2's InvalidURL."""
    hosts: list[bytes] = []

    async def broken(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        hosts.extend(line for line in head.split(b"\r\n") if line.lower().startswith(b"host:"))
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: 16\r\n\r\ndata: not json\n\n"
        )
        await writer.drain()
        writer.close()

    try:
        server = await asyncio.start_server(broken, "::1", 0)
    except OSError:
        import pytest

        pytest.skip("no IPv6 loopback here")
    url = f"http://[::1]:{server.sockets[0].getsockname()[1]}/v1"
    provider = OpenAIProvider(api_key=KEY, base_url=url, timeout=5, max_retries=0)
    try:
        try:
            await collect(provider, model_call("m"))
        except ProviderError:
            pass
    finally:
        await provider.aclose()
        server.close()
    assert hosts and hosts[0].startswith(b"Host: [::1]:"), hosts


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "sdk"])
async def test_a_token_that_is_not_utf8_becomes_u_fffd_and_the_answer_completes(lean):
    """A model server whose stream carries invalid UTF-8 inside a token: the bytes become U+FFFD (as a
    lone surrogate does, shared.tokens.well_formed) and the answer completes, on the lean path and
    where the SDK streams (TLS, a proxy: here the lean path switched off); before, the job failed
    ('cannot connect to the provider … check OPENAI_BASE_URL' on the lean path, the SDK's
    UnicodeDecodeError on its own) and was retried."""
    body = (
        b'data: {"choices":[{"delta":{"content":"caf\xc3"}}]}\n\n'
        b'data: {"choices":[{"delta":{"content":"!"},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'
    )

    async def garbled(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n" + body
        )
        await writer.drain()
        writer.close()

    server, url = await serve(garbled)
    provider = OpenAIProvider(api_key=KEY, base_url=url, timeout=5, max_retries=0)
    if not lean:
        provider.lean = None
    try:
        pieces, _ = await collect(provider, model_call("m"))
    finally:
        await provider.aclose()
        server.close()
    assert "".join(pieces) == "caf\ufffd!"
