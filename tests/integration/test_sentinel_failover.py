"""REDIS_URL=redis+sentinel://…: a primary and two replicas (AOF), three Sentinels, two worker processes
and a messenger over streamable HTTP, all real processes on loopback. The primary is SIGKILLed while 20
MCP calls stream: every call ends with its exact answer or a clear one-line error, never a wrong or
truncated answer; the calls after the failover are all exact, and no messenger or worker was restarted.
Then a Sentinel is killed and the new primary frozen (SIGSTOP: its connections stay open and nothing
answers, as when a machine is lost or cut off), mid-stream again: the same holds.

The processes are given a Sentinel address nothing listens on first, as when one Sentinel host is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import time
from dataclasses import dataclass, field

import anyio
import pytest
from mcp import Client
from mcp_helpers import HttpMessenger, messenger_env, running_messengers
from openai_server import eventually
from processes import WorkerProcesses, beating_pids
from readers import text_of
from redis_server import RedisServer
from sentinels import MASTER, SentinelCluster, SentinelProcess, wait_until

from messenger.cli import main as messenger_cli
from messenger.hub import KEEPALIVE_CHANNEL, EventHub
from messenger.jobs import JobClient
from messenger.queue import JobQueue
from messenger.stored import lost_message
from shared import keys
from shared.connection import connect
from shared.errors import QueueUnavailable
from shared.events import DoneEvent, Event, StartEvent, TokenUsage, publish_events
from shared.settings import load_settings
from worker.providers.mock import mock_reply
from worker.wakeups import redis_ready

TOKEN_DELAY_MS = "50"  # a 60-word answer streams for about 4 s: long enough to span a failover
SPANNING = ("during", "again")


def whole_answer(prompt: str) -> str:
    return "".join(mock_reply([{"role": "user", "content": prompt}]))


def prompt(phase: str, i: int) -> str:
    """Calls that span a failover stream 60 words (about 4 s); the others 10."""
    return f"{phase} call {i} " + " ".join(f"w{i}x{k}" for k in range(60 if phase in SPANNING else 10))


@dataclass
class Outcomes:
    exact: int = 0
    errors: list[str] = field(default_factory=list)  # clear one-line errors, as the caller read them
    wrong: list[str] = field(default_factory=list)  # anything else: the promise broken

    def __str__(self) -> str:
        return f"{self.exact} exact, {len(self.errors)} clear errors, {len(self.wrong)} wrong"


@dataclass
class Stack:
    cluster: SentinelCluster
    messenger: HttpMessenger
    workers: WorkerProcesses


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    cluster = SentinelCluster(tmp_path_factory.mktemp("sentinel"), replicas=2)
    try:
        cluster.start()
        yield cluster
    finally:
        print(cluster.logs())
        cluster.stop()


@pytest.fixture(scope="module")
def stack(cluster, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sentinel-stack")
    url = cluster.url(dead_first=True)
    workers = WorkerProcesses(cluster.nodes[0], tmp)
    try:
        with running_messengers(tmp) as messengers:
            messenger = messengers.http(messenger_env(url), wait=False)  # starts while the workers do
            workers.start(url, count=2, MOCK_TOKEN_DELAY_MS=TOKEN_DELAY_MS)
            messenger.wait_ready(60)
            yield Stack(cluster, messenger, workers)
            for path in sorted(tmp.glob("worker-*.log")):  # what each saw go wrong, then its last lines
                text = path.read_text(errors="replace")
                warned = [line for line in text.splitlines() if " WARNING " in line or " ERROR " in line]
                print(f"----- {path.name}: warnings -----\n" + "\n".join(warned[-300:]))
                print(f"----- {path.name}: tail -----\n{text[-10_000:]}")
    finally:
        workers.stop_all()


async def calls(clients: list[Client], phase: str, count: int, mid_stream=None) -> Outcomes:
    """`count` streaming calls spread over `clients`; `mid_stream` runs (in a thread) once every call
    has streamed some of its answer."""
    outcomes, streaming = Outcomes(), [anyio.Event() for _ in range(count)]

    async def call(client: Client, i: int) -> None:
        async def on_progress(progress, total, message) -> None:
            streaming[i].set()

        try:
            result = await client.call_tool(
                "send_message_to_ai", {"message": prompt(phase, i)}, progress_callback=on_progress
            )
        except Exception as e:  # the client library gave up: not an answer the promise allows
            outcomes.wrong.append(f"call {i} raised {e!r}")
            return
        finally:
            streaming[i].set()
        answer, text = result.structured_content or {}, text_of(result)
        if not result.is_error and answer.get("aiResponse") == whole_answer(prompt(phase, i)):
            outcomes.exact += 1
        elif result.is_error and "\n" not in text.strip() and "Traceback" not in text:
            outcomes.errors.append(text)
        else:
            outcomes.wrong.append(f"call {i}: error={result.is_error} {text[:300]!r}")

    async with anyio.create_task_group() as tg:
        for i in range(count):
            tg.start_soon(call, clients[i % len(clients)], i)
        if mid_stream is not None:
            for event in streaming:
                await event.wait()
            await anyio.to_thread.run_sync(mid_stream)
    return outcomes


def ended_with_a_gap(job_id: str) -> list[Event]:
    """A job's start and its ending, the token between them missing: what a new primary may hold of a
    job whose events reached it but whose stored result did not."""
    at = {"job_id": job_id, "attempt": 1, "ts": time.time()}
    usage = TokenUsage(prompt_tokens=1, completion_tokens=1, total_tokens=2)
    return [
        StartEvent(**at, seq=0, worker_id="w1", model="mock-1"),
        DoneEvent(**at, seq=2, usage=usage, cost=None, finish_reason="stop", model="mock-1"),
    ]


def why_not_exact(cluster: SentinelCluster, outcomes: Outcomes, epoch: int) -> str:
    """A failure message with what tells a loss from a bug: the outcomes, whether the Sentinels failed
    over on their own since the test's last failover left `epoch` (a primary that did not answer them
    within DOWN_AFTER_MS: what it acknowledged and had not passed on is lost with it, as asynchronous
    replication allows), every node's replication state, and which node holds which key of the first
    job told lost (the logs follow: messenger, workers, Sentinel events, each node's log)."""
    lines = [str(outcomes), *outcomes.errors[:3], *outcomes.wrong[:3]]
    now = cluster.config_epoch()
    if now != epoch:
        lines.append(
            f"the Sentinels failed over on their own during these calls (config epoch {epoch} -> {now})"
        )
    lines.append(cluster.state())
    lost = next((m[1] for e in outcomes.errors if (m := re.search(r"job ([0-9a-f]{32})", e))), None)
    for node in cluster.nodes if lost else ():
        if node in cluster.frozen or node.proc is None or node.proc.poll() is not None:
            continue
        held = [
            k
            for k in (keys.job, keys.in_progress, keys.result, keys.stream, keys.owner)
            if node.client().exists(k(lost))
        ]
        lines.append(f"redis {node.port} holds of job {lost}: {[k.__name__ for k in held] or 'nothing'}")
    return "\n".join(lines)


async def test_primary_killed_mid_stream_every_answer_exact_or_a_clear_error_and_nothing_restarted(stack):
    cluster = stack.cluster
    pids = {p.pid for p in stack.workers.procs}

    epochs: list[int] = []  # the config epoch each failover the test made left

    def fail_over() -> None:
        started = time.monotonic()
        cluster.wait_for_failover(cluster.kill_primary())
        epochs.append(cluster.config_epoch())
        print(f"primary killed: failed over in {time.monotonic() - started:.1f}s")

    def freeze() -> None:
        started = time.monotonic()
        cluster.wait_for_failover(cluster.freeze_primary())
        epochs.append(cluster.config_epoch())
        print(f"primary frozen: failed over in {time.monotonic() - started:.1f}s")

    with anyio.fail_after(150):
        async with contextlib.AsyncExitStack() as opened:  # both protocol eras; sessions outlive failovers
            modes = ("auto", "legacy") * 2
            clients = [await opened.enter_async_context(Client(stack.messenger.url, mode=m)) for m in modes]
            during = await calls(clients, "during", 20, mid_stream=fail_over)
            after = await calls(clients, "after", 20)
            print(f"first failover: {during}; the 20 calls after it: {after}; errors: {during.errors}")
            assert not during.wrong, why_not_exact(cluster, during, epochs[-1])
            assert after.exact == 20, why_not_exact(cluster, after, epochs[-1])

            cluster.sentinels[0].kill()  # two of three Sentinels still make a quorum and elect a leader
            again = await calls(clients, "again", 10, mid_stream=freeze)
            last = await calls(clients, "last", 10)
            print(
                f"second failover, primary frozen, a Sentinel down: {again}; the 10 after: {last}; {again.errors}"
            )
            assert not again.wrong, why_not_exact(cluster, again, epochs[-1])
            assert last.exact == 10, why_not_exact(cluster, last, epochs[-1])

    assert stack.messenger.proc.poll() is None and all(p.poll() is None for p in stack.workers.procs)
    primary = cluster.primary()
    assert primary is not cluster.nodes[0]
    assert pids <= beating_pids(primary.client()), "both workers beat on the newest primary"
    subscribers = lambda: dict(primary.client().pubsub_numsub(keys.WAKEUP_CHANNEL, KEEPALIVE_CHANNEL))  # noqa: E731
    wanted = {keys.WAKEUP_CHANNEL.encode(): 2, KEEPALIVE_CHANNEL.encode(): 1}
    assert wait_until(lambda: subscribers() == wanted, 10, "wake-ups and the event hub re-subscribed")
    status, _ = stack.messenger.get("/health")
    assert status == 200


async def test_a_master_name_no_sentinel_watches_stops_the_worker_with_one_line(cluster, clean_env):
    settings = load_settings(redis_url=cluster.url(master="mcpq-typo"))
    with pytest.raises(QueueUnavailable) as refused:
        await redis_ready(settings)
    message = str(refused.value)
    assert "'mcpq-typo'" in message and MASTER in message and "REDIS_URL" in message, message
    assert "\n" not in message


def test_a_master_name_no_sentinel_watches_is_one_line_from_the_cli(cluster, clean_env, capsys):
    clean_env.setenv("REDIS_URL", cluster.url(master="mcpq-typo", userinfo=":s3cr3t-pw@"))
    assert messenger_cli(["jobs"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("messenger: ") and "\n" not in err, err
    assert "'mcpq-typo'" in err and "REDIS_URL" in err and "s3cr3t" not in err, err


async def test_sentinels_unreachable_at_start_the_worker_waits_and_then_starts(
    cluster, clean_env, caplog, tmp_path
):
    late = SentinelProcess(tmp_path, cluster.primary().port)  # its port is chosen; nothing listens yet
    ready = asyncio.create_task(
        redis_ready(load_settings(redis_url=f"redis+sentinel://127.0.0.1:{late.port}/{MASTER}"))
    )
    try:
        await eventually(lambda: "no Sentinel answered" in caplog.text, timeout=20)
        assert not ready.done()
        await asyncio.to_thread(late.start)
        await asyncio.wait_for(ready, 30)
    finally:
        ready.cancel()
        late.kill()


def test_cli_commands_through_sentinel_answer_and_exit(cluster, clean_env, capsys):
    """`messenger jobs` through Sentinel (a dead one listed first) answers and exits. It once hung when it
    ended while its event hub was still asking a Sentinel (shared/sentinel.py: no socket_timeout)."""
    clean_env.setenv("REDIS_URL", cluster.url(dead_first=True))
    for _ in range(3):
        assert messenger_cli(["jobs"]) == 0, capsys.readouterr().err


async def test_a_job_lost_in_a_failover_is_told_as_such(tmp_path, caplog):
    """A promoted replica lacks what its primary had not sent it yet: a job lost so is not blamed on
    FLUSHALL (the new primary's uptime is long; it is its replication history that tells), nor is one
    whose events came through but whose stored result did not blamed on a restart. The messenger's log
    names the lost job and the Redis that answered, so a loss can be told from a process reading a
    server it should not."""
    primary = RedisServer(tmp_path / "a")
    primary.tmp.mkdir()
    primary.start()
    replica = RedisServer(tmp_path / "b", args=("--replicaof", "127.0.0.1", str(primary.port)))
    replica.tmp.mkdir()
    replica.start()
    try:
        replica.client().replicaof("NO", "ONE")  # what Sentinel does to the replica it promotes
        followed_since = time.time() + 1  # both servers run since before the job was followed
        for server, why in ((replica, "failed over to a replica"), (primary, "removed from Redis")):
            redis = connect(server.url)
            try:
                assert why in await lost_message(redis, "j1", since=followed_since)
                logged = caplog.records[-1].getMessage()
                assert logged.startswith("job j1: lost (") and why in logged, logged
                assert f"port {server.port}, role master" in logged, logged
                await publish_events(redis, ended_with_a_gap("j2"))  # no result, no keys, no worker
                settings = load_settings(redis_url=server.url)
                ended = await JobClient(redis, EventHub(redis), settings, JobQueue(redis, settings)).get("j2")
                assert ended.status == "failed" and ended.error is not None, ended
                assert "lost its stored result" in ended.error and why in ended.error, ended.error
            finally:
                await redis.aclose()
    finally:
        replica.stop()
        primary.stop()
