"""Clients nobody on this project wrote against real messengers over streamable HTTP, real worker
processes and a real Redis: the TypeScript SDKs (v1 `@modelcontextprotocol/sdk`, v2
`@modelcontextprotocol/client`), each listing tools and prompts and calling send_message_to_ai with an
onprogress handler (ts_clients/mcp_client.cjs prints what it saw as one JSON line), on one replica and
behind a per-request round-robin proxy over three; and the MCP conformance suite's server scenarios.

The packages and Node 22 come from the npm registry (tests/integration/node_tools.py); one set of
replicas, workers and proxy serves every test of this module, so a client costs about a second.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import proxy as proxy_module
import pytest
from mcp_helpers import HttpMessenger, messenger_env, running_messengers
from node_tools import PACKAGES, NodeTools
from processes import WorkerProcesses
from proxy import RunningProxy, proxy_in_thread
from readers import stream_events

from shared import keys
from worker.providers.mock import mock_reply

CLIENT = Path(__file__).parent / "ts_clients" / "mcp_client.cjs"
QUEUE_TOOLS = {"send_message_to_ai", "submit_message", "get_job", "wait_for_job", "cancel_job"}


def whole_answer(prompt: str) -> str:
    return "".join(mock_reply([{"role": "user", "content": prompt}]))


WORKER_ENV = {"MOCK_TOKEN_DELAY_MS": "20", "WORKER_CONCURRENCY": "2", "WORKER_LEASE_SECONDS": "2"}


@dataclass
class Stack:
    replicas: list[HttpMessenger]
    proxy: RunningProxy  # round-robin over the replicas, per request
    workers: WorkerProcesses

    @property
    def url(self) -> str:
        """One replica's MCP URL (no proxy)."""
        return self.replicas[0].url


@pytest.fixture(scope="module")
def stack(redis_server, tmp_path_factory) -> Iterator[Stack]:
    """Three `messenger serve --transport http` replicas behind a round-robin proxy and two worker
    processes with two slots each, on the session's Redis. 20 ms between mock tokens: an answer spans
    several progress notifications and a worker can be killed mid-stream; the 2 s lease lets
    another worker re-run a killed worker's job soon."""
    redis_server.client().flushall()
    tmp = tmp_path_factory.mktemp("ts-clients")
    workers = WorkerProcesses(redis_server, tmp)
    try:
        workers.start(redis_server.url, count=2, **WORKER_ENV)
        with running_messengers(tmp) as messengers:
            replicas = [messengers.http(messenger_env(redis_server.url), wait=False) for _ in range(3)]
            for replica in replicas:
                replica.wait_ready()
            with proxy_in_thread([replica.url for replica in replicas]) as proxy:
                yield Stack(replicas, proxy, workers)
    finally:
        workers.stop_all()


def run_client(tools: NodeTools, sdk: str, url: str, era: str = "legacy", **plan) -> dict:
    """Run ts_clients/mcp_client.cjs with one SDK; returns the JSON line it printed (no client errors)."""
    done = tools.node(CLIENT, json.dumps({"sdk": sdk, "url": url, "era": era, **plan}))
    return client_saw(sdk, done.returncode, done.stdout, done.stderr)


def client_saw(sdk: str, returncode: int, stdout: str, stderr: str) -> dict:
    assert returncode == 0, f"node exited {returncode}:\n{stdout}\n{stderr}"
    seen = json.loads(stdout.splitlines()[-1])
    assert seen["errors"] == [], f"the {sdk} client reported errors: {seen['errors']}\n{stderr}"
    return seen


def assert_exact_answers(seen: dict, messages: list[str]) -> None:
    """Each call completed with the mock's exact answer; its progress messages, joined, are that answer
    (from the last `mcp-queue/restart` notification on, as a client is told to do)."""
    assert [call["message"] for call in seen["calls"]] == messages
    for call in seen["calls"]:
        assert call["error"] is None, call
        assert call["isError"] is False, call
        answer = whole_answer(call["message"])
        assert call["result"]["status"] == "completed"
        assert call["result"]["aiResponse"] == answer
        texts = [n.get("message") or "" for n in call["notifications"][last_restart(call) :]]
        assert len([t for t in texts if t]) >= 2, call["notifications"]  # streamed, not one lump at the end
        assert "".join(texts) == answer


def meta(notification: dict) -> dict:
    return notification.get("_meta") or {}


def last_restart(call: dict) -> int:
    """The index of the call's last notification with `mcp-queue/restart` (0 if none)."""
    restarts = [i for i, n in enumerate(call["notifications"]) if "mcp-queue/restart" in meta(n)]
    return restarts[-1] if restarts else 0


FOLLOWED = " ".join(f"word{i}" for i in range(20))  # a 36-token answer: 0.7 s to stream


def assert_followed_to_the_end(seen: dict) -> None:
    """The client's job:// subscription (plan `follow`) told it of updates until the job completed."""
    follow = seen["follow"]["ok"]
    assert follow["job"]["status"] == "completed" and follow["job"]["aiResponse"] == whole_answer(FOLLOWED)
    assert follow["statuses"][-1] == "completed"
    updated = [n for n in seen["notifications"] if n["method"] == "notifications/resources/updated"]
    assert {n["params"]["uri"] for n in updated} == {follow["uri"]}


CLIENTS = [  # (sdk, era, the protocol version it must end up speaking)
    pytest.param("v1", "legacy", "2025-11-25", id="ts-sdk-v1"),
    pytest.param("v2", "legacy", "2025-11-25", id="ts-sdk-v2-2025-11-25"),
    pytest.param("v2", "modern", "2026-07-28", id="ts-sdk-v2-2026-07-28"),
]


@pytest.mark.parametrize(("sdk", "era", "protocol"), CLIENTS)
def test_ts_sdk_lists_and_streams_exact_answers(node_tools, stack, sdk, era, protocol):
    messages = [f"hello from TS {sdk} {era}", f"a second call from TS {sdk} {era}, at the same time"]
    seen = run_client(node_tools, sdk, stack.url, era, messages=messages)
    package = "@modelcontextprotocol/sdk" if sdk == "v1" else "@modelcontextprotocol/client"
    assert seen["sdkVersion"] == PACKAGES[package]
    assert seen["protocolVersion"] == protocol
    assert (seen["sessionId"] is None) == (protocol == "2026-07-28")  # sessions are a 2025-11-25 thing
    assert seen["server"]["name"] == "mcp-queue"
    assert QUEUE_TOOLS <= set(seen["tools"])
    assert isinstance(seen["prompts"], list)
    assert_exact_answers(seen, messages)


@pytest.mark.parametrize(("sdk", "era", "protocol"), CLIENTS)
def test_ts_sdk_behind_a_round_robin_proxy_over_three_replicas(node_tools, stack, sdk, era, protocol):
    """Each request may land on another replica (a 2025-11-25 session lives in Redis): no session
    error, every answer exact, every replica served a call; a job:// subscription's updates reach
    the client whichever replica holds its GET stream."""
    messages = [f"call {n} from TS {sdk} {era} through the proxy" for n in range(4)]
    follow = FOLLOWED if protocol == "2025-11-25" else None
    before = len(stack.proxy.served)
    seen = run_client(node_tools, sdk, stack.proxy.url, era, messages=messages, follow=follow)
    assert seen["protocolVersion"] == protocol
    assert_exact_answers(seen, messages)
    if follow:
        assert_followed_to_the_end(seen)
    served = stack.proxy.served[before:]
    assert [str(s) for s in served if s.status >= 400] == []
    assert {s.backend for s in served if "tools/call" in s.rpc} == {0, 1, 2}


def test_inspector_behind_a_round_robin_proxy_over_three_replicas(node_tools, stack):
    """The Inspector (2025-11-25 by default) initializes on one replica and calls on the next."""
    before = len(stack.proxy.served)
    listing = node_tools.inspector(stack.proxy.url, "--method", "tools/list")
    called = node_tools.inspector(
        stack.proxy.url, "--method", "tools/call", "--tool-name", "send_message_to_ai",
        "--tool-arg", "message=inspector through the proxy",
    )  # fmt: skip
    assert QUEUE_TOOLS <= {tool["name"] for tool in listing["result"]["tools"]}
    result = called["result"]
    assert result.get("isError") is not True, result
    assert result["structuredContent"]["aiResponse"] == whole_answer("inspector through the proxy")
    served = stack.proxy.served[before:]
    assert [str(s) for s in served if s.status >= 400] == []
    assert len({s.backend for s in served}) == 3


def test_progress_is_answer_text_only_with_queue_waits_in_both_ts_sdks(node_tools, stack):
    """Twelve calls at once over four worker slots: most wait in the queue. Status rides in `_meta`
    (the job's id, queued or running, the attempt), `message` carries answer text only, so each
    call's messages joined equal its `aiResponse`."""
    runs = {sdk: [f"queued call {n} from TS {sdk}" for n in range(6)] for sdk in ("v1", "v2")}
    with ThreadPoolExecutor(len(runs)) as pool:
        futures = {
            sdk: pool.submit(run_client, node_tools, sdk, stack.url, messages=m) for sdk, m in runs.items()
        }
        seen = {sdk: future.result() for sdk, future in futures.items()}
    for sdk, messages in runs.items():
        assert_exact_answers(seen[sdk], messages)
    calls = [call for out in seen.values() for call in out["calls"]]
    for call in calls:
        assert {meta(n).get("mcp-queue/jobId") for n in call["notifications"]} == {call["result"]["jobId"]}
        statuses = [meta(n).get("mcp-queue/status") for n in call["notifications"]]
        assert set(statuses) <= {"queued", "running", "completed"}, statuses
        assert statuses[-1] == "completed"
    waited = [c for c in calls if meta(c["notifications"][0]).get("mcp-queue/status") == "queued"]
    assert len(waited) >= len(calls) - 4  # no more than four ran at once


def kill_the_worker_streaming_a_new_job(client, workers: WorkerProcesses, old: set[bytes]) -> str:
    """SIGKILL the worker process running the job whose stream is not in `old`, once its first
    attempt has streamed 5 tokens; returns the job id."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for key in set(client.scan_iter(keys.STREAM_PREFIX + "*")) - old:
            job_id = key.decode().removeprefix(keys.STREAM_PREFIX)
            events = stream_events(client, job_id)
            if sum(e["type"] == "token" for e in events) >= 5:
                (start,) = [e for e in events if e["type"] == "start"]
                pid = json.loads(client.get(keys.worker(start["worker_id"])))["pid"]
                (proc,) = [p for p in workers.procs if p.pid == pid]  # only a process the test started
                proc.kill()
                return job_id
        time.sleep(0.01)
    raise AssertionError("no new job streamed 5 tokens in 30 s")


@pytest.mark.parametrize(("sdk", "era", "protocol"), CLIENTS)
def test_a_ts_client_drops_a_killed_attempt_on_mcp_queue_restart(
    node_tools, stack, redis_server, sdk, era, protocol
):
    """The worker streaming the call is killed; another runs the job again (attempt 2). The client
    sees one notification with `mcp-queue/restart: 2`; the text from it on is the whole answer."""
    message = " ".join(f"word{i}" for i in range(40))  # a 56-token answer: over a second to stream
    client = redis_server.client()
    old = set(client.scan_iter(keys.STREAM_PREFIX + "*"))
    plan = json.dumps({"sdk": sdk, "url": stack.url, "era": era, "messages": [message]})
    node = subprocess.Popen(
        node_tools.node_command(CLIENT, plan), env=node_tools.env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        job_id = kill_the_worker_streaming_a_new_job(client, stack.workers, old)
        stack.workers.start(redis_server.url, **WORKER_ENV)  # the stack keeps two live workers
        stdout, stderr = node.communicate(timeout=60)
    finally:
        if node.poll() is None:
            node.kill()
    seen = client_saw(sdk, node.returncode, stdout, stderr)
    assert seen["protocolVersion"] == protocol
    (call,) = seen["calls"]
    assert call["result"]["jobId"] == job_id
    assert call["result"]["attempt"] == 2
    restarts = [meta(n)["mcp-queue/restart"] for n in call["notifications"] if "mcp-queue/restart" in meta(n)]
    assert restarts == [2]
    dead = "".join(n.get("message") or "" for n in call["notifications"][: last_restart(call)])
    assert dead and whole_answer(message).startswith(dead)  # the dead attempt's text, dropped
    assert_exact_answers(seen, [message])


@contextlib.contextmanager
def first_call_stream_cut(monkeypatch) -> Iterator[list[bytes]]:
    """The proxy ends the SSE response of the next tools/call once its first progress text has gone
    through, as a dropped connection would; yields what it passed on before the cut."""
    relay, passed = proxy_module._relay, []

    async def cutting(response, receive, send) -> None:
        if passed or b'"tools/call"' not in response.request.content:
            return await relay(response, receive, send)
        headers = [(k, v) for k, v in response.headers.raw if k.lower() not in proxy_module.HOP_BY_HOP]
        await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
        async for chunk in response.aiter_raw():
            passed.append(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if b'"message":"' in b"".join(passed):
                break
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    monkeypatch.setattr(proxy_module, "_relay", cutting)
    yield passed


@pytest.mark.parametrize(("sdk", "era", "protocol"), CLIENTS[:2])
def test_a_ts_client_whose_stream_drops_resumes_on_another_replica(
    node_tools, stack, monkeypatch, sdk, era, protocol
):
    """2025-11-25: the call's SSE stream is cut after its first text; the SDK reconnects with
    Last-Event-ID, the proxy sends that GET to another replica, and the call ends with the exact
    answer, its progress neither losing nor repeating a token."""
    message = f"resume TS {sdk} on another replica"
    before = len(stack.proxy.served)
    with first_call_stream_cut(monkeypatch) as passed:
        seen = run_client(node_tools, sdk, stack.proxy.url, era, messages=[message])
    assert passed, "the cut never happened"
    assert_exact_answers(seen, [message])
    served = stack.proxy.served[before:]
    posted = next(s for s in served if "tools/call" in s.rpc)
    resumed = [s for s in served if s.last_event_id]
    assert resumed and resumed[0].method == "GET" and resumed[0].status == 200
    assert resumed[0].backend != posted.backend


PROMPTS = {"delegate", "review_job", "summarize"}  # the repo's prompts/ directory


@pytest.mark.parametrize(("sdk", "era", "protocol"), CLIENTS)
def test_ts_sdks_get_prompts_complete_arguments_and_follow_a_job(node_tools, stack, sdk, era, protocol):
    """Prompts with per-client variables (this client calls itself claude-code), completions of a
    prompt's choices and of the caller's job ids, and (2025-11-25) a job:// subscription."""
    plan = {
        "clientName": "claude-code",
        "messages": [f"a job to complete the id of, from TS {sdk} {era}"],
        "getPrompt": {"name": "delegate", "arguments": {"task": "count the stars"}},
        "complete": {
            "ref": {"type": "ref/prompt", "name": "delegate"},
            "argument": {"name": "tool", "value": "sub"},
        },
        "completeJobId": True,
        "follow": FOLLOWED if protocol == "2025-11-25" else None,
    }
    seen = run_client(node_tools, sdk, stack.url, era, **plan)
    assert seen["protocolVersion"] == protocol
    assert PROMPTS <= set(seen["prompts"])
    (message,) = seen["prompt"]["ok"]["messages"]
    assert "count the stars" in message["content"]["text"]
    assert "Then show the answer as it is" in message["content"]["text"]  # [clients."claude-code"]
    assert seen["completion"]["ok"]["completion"]["values"] == ["submit_message"]
    assert seen["calls"][0]["result"]["jobId"] in seen["jobCompletion"]["ok"]["completion"]["values"]
    if protocol == "2026-07-28":  # no resources/subscribe in this era
        assert seen["capabilities"]["resources"]["subscribe"] is False
        return
    assert_followed_to_the_end(seen)


LOG_LEVEL_META = "io.modelcontextprotocol/logLevel"  # a 2026-07-28 request's opt-in to log messages


def lifecycle_logs(seen: dict, call: dict) -> list[str]:
    """The `notifications/message` texts about the call's job, in order."""
    job = call["result"]["jobId"]
    return [
        n["params"]["data"]
        for n in seen["notifications"]
        if n["method"] == "notifications/message" and job in str(n["params"]["data"])
    ]


@pytest.mark.parametrize(("sdk", "era", "protocol"), CLIENTS)
def test_ts_sdks_hear_each_jobs_lifecycle_as_log_messages(node_tools, stack, sdk, era, protocol):
    """2025-11-25: logging/setLevel behind the round-robin proxy, honoured by whichever replica takes
    the call; 2026-07-28: no logging capability, setLevel refused, a call that opts in via `_meta`
    hears its job's lifecycle. The progress messages stay the answer."""
    messages = [f"a logged call from TS {sdk} {era} {n}" for n in range(2)]
    modern = protocol == "2026-07-28"
    plan = {
        "messages": messages,
        "logLevel": "info",
        "callMeta": {LOG_LEVEL_META: "info"} if modern else None,
    }
    seen = run_client(node_tools, sdk, stack.proxy.url, era, **plan)
    assert_exact_answers(seen, messages)
    assert ("logging" in seen["capabilities"]) is not modern
    assert ("error" in seen["logLevel"]) is modern, seen["logLevel"]
    for call in seen["calls"]:
        job, result = call["result"]["jobId"], call["result"]
        assert lifecycle_logs(seen, call) == [
            f"job {job} queued",
            f"job {job} started on worker {result['workerId']}",
            f"job {job} completed: {result['usage']['completionTokens']} tokens",
        ]
    if not modern:  # a session at warning hears none of a job that went well
        quiet = run_client(node_tools, sdk, stack.proxy.url, era, messages=messages[:1], logLevel="warning")
        assert quiet["logLevel"] == {"ok": {}}
        assert [n for n in quiet["notifications"] if n["method"] == "notifications/message"] == []


@pytest.mark.parametrize("era", ["legacy", "auto", "modern"])
def test_inspector_lists_and_gets_prompts_and_sets_a_log_level_in_every_era(node_tools, stack, era):
    """Prompts in all three of the Inspector's eras (auto finds 2026-07-28); logging/setLevel in
    2025-11-25, and in 2026-07-28 (which deprecates logging) the Inspector itself says the server
    does not offer it."""
    listing = node_tools.inspector(stack.url, "--protocol-era", era, "--method", "prompts/list")
    got = node_tools.inspector(
        stack.url, "--protocol-era", era, "--method", "prompts/get", "--prompt-name", "summarize",
        "--prompt-args", "text=the inspector asked", "style=one-line",
    )  # fmt: skip
    assert PROMPTS <= {prompt["name"] for prompt in listing["result"]["prompts"]}
    (message,) = got["result"]["messages"]
    assert "the inspector asked" in message["content"]["text"]
    assert "one-line" in message["content"]["text"]
    set_level = [node_tools.bin("mcp-inspector"), "--cli", stack.url, "--protocol-era", era]
    set_level += ["--method", "logging/setLevel", "--log-level", "info", "--format", "json", "-q"]
    done = subprocess.run(set_level, env=node_tools.env, capture_output=True, text=True, timeout=60)
    if era == "legacy":
        assert (done.returncode, json.loads(done.stdout)) == (0, {"result": {}}), done.stderr
    else:
        assert done.returncode != 0 and "does not support logging" in done.stdout + done.stderr


# The conformance suite's server scenarios, by what they need. Its fixture scenarios call tools,
# prompts and resources named test_* / test://… that only its own reference server has, or need a
# server that asks the client for sampling or elicitation (the messenger never does).
CONFORMANCE_PASSING = {
    "server-initialize", "ping", "tools-list", "resources-list", "prompts-list",
    "server-sse-multiple-streams", "dns-rebinding-protection",
    "completion-complete",  # for the fixture prompt test_prompt_with_arguments: no values, as it should
    # these two call a fixture tool; they pass on the messenger's `isError` "Unknown tool" text result
    "tools-call-simple-text", "tools-call-error",
    "logging-set-level",  # 2025-11-25 logging/setLevel (messenger/client_log.py)
}  # fmt: skip
CONFORMANCE_FIXTURES = {
    "tools-call-image", "tools-call-audio", "tools-call-embedded-resource", "tools-call-mixed-content",
    "tools-call-with-logging", "tools-call-with-progress", "tools-call-sampling", "tools-call-elicitation",
    "elicitation-sep1034-defaults", "elicitation-sep1330-enums", "resources-read-text",
    "resources-read-binary", "resources-templates-read", "prompts-get-simple", "prompts-get-with-args",
    "prompts-get-embedded-resource", "prompts-get-with-image",
    "resources-subscribe", "resources-unsubscribe",  # to test://watched-resource: only job:// can be
}  # fmt: skip
SCENARIO_DIR = re.compile(r"^server-(?P<scenario>.+)-\d{4}-\d\d-\d\dT[\d-]+Z$")


def conformance_checks(node_tools: NodeTools, url: str, out: Path) -> dict[str, list[dict]]:
    """Run `conformance server` (its active suite) against `url`; each scenario's checks."""
    command = [node_tools.bin("conformance"), "server", "--url", url, "-o", str(out)]
    done = subprocess.run(command, env=node_tools.env, capture_output=True, text=True, timeout=110)
    checks = {}
    for folder in out.iterdir():
        match = SCENARIO_DIR.match(folder.name)
        assert match, f"unexpected output {folder.name}:\n{done.stdout[-3000:]}"
        checks[match["scenario"]] = json.loads((folder / "checks.json").read_text())
    assert checks, (
        f"the conformance suite ran no scenario (exit {done.returncode}):\n{done.stdout}{done.stderr}"
    )
    return checks


@pytest.mark.parametrize("through", ["one replica", "the round-robin proxy"])
def test_conformance_server_scenarios_pass_except_those_of_its_own_fixtures(
    node_tools, stack, tmp_path, through
):
    checks = conformance_checks(
        node_tools, stack.url if through == "one replica" else stack.proxy.url, tmp_path
    )
    assert set(checks) == CONFORMANCE_PASSING | CONFORMANCE_FIXTURES
    failed = {
        f"{scenario}: {check['id']} {check['status']} {check.get('errorMessage')}"
        for scenario in CONFORMANCE_PASSING
        for check in checks[scenario]
        if check["status"] != "SUCCESS"
    }
    assert failed == set()
