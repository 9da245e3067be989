"""Progress purity, as a client sees it over streamable HTTP in both protocol eras, with real worker
processes and real Redis: the progress messages joined are the answer (`aiResponse`), whatever
happens on the way: queue waits with keep-alives, a worker SIGKILLed mid-stream (twice), tool calls.
Everything that is not answer text is in `_meta` under `mcp-queue/…`."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import anyio
import pytest
from mcp import Client
from mcp_clock_server import PREFIX
from mcp_helpers import messenger_env, running_messengers
from processes import start_openai_workers
from progress_notes import JOB_ID, RESTART, STATUS, ProgressNotes, want_progress
from readers import text_of

from messenger.aggregate import JOB_ID_META
from messenger.progress import TOOL_CALL, TOOL_RESULT
from shared import keys
from worker.providers.mock import mock_reply

LONG_MESSAGE = " ".join(f"word{i}" for i in range(40))  # the mock echoes all 40: a 56-token answer


def expected_text(message: str) -> str:
    return "".join(mock_reply([{"role": "user", "content": message}]))


CLOCK = str(Path(__file__).resolve().parents[1] / "mcp_clock_server.py")
pytestmark = pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")  # logging
ERAS = pytest.mark.parametrize(
    ("mode", "era"), [("auto", "2026-07-28"), ("legacy", "2025-11-25")], ids=["modern", "legacy"]
)


@pytest.fixture
def messengers(tmp_path):
    with running_messengers(tmp_path) as m:
        yield m


async def call(client: Client, message: str) -> dict:
    result = await client.call_tool(
        "send_message_to_ai", {"message": message}, progress_callback=want_progress
    )
    assert not result.is_error, text_of(result)
    return result.structured_content


async def test_queue_waits_send_keepalives_in_meta_and_the_messages_stay_the_answer(
    redis_url, workers, messengers
):
    """One worker slot, six callers in both eras: the later ones wait more than 5 s in the queue."""
    workers.start(redis_url, count=1, WORKER_CONCURRENCY="1", MOCK_TOKEN_DELAY_MS="25")
    url = messengers.http(messenger_env(redis_url)).url
    notes = {"auto": ProgressNotes(), "legacy": ProgressNotes()}
    answers: dict[str, list[dict]] = {"auto": [], "legacy": []}
    with anyio.fail_after(90):
        async with (
            Client(url, mode="auto", message_handler=notes["auto"]) as modern,
            Client(url, mode="legacy", message_handler=notes["legacy"]) as legacy,
            anyio.create_task_group() as tg,
        ):
            assert (modern.protocol_version, legacy.protocol_version) == ("2026-07-28", "2025-11-25")
            queued = [anyio.Event()]

            for seen in notes.values():  # a job's first notification: it is in the queue
                seen.listeners.append(
                    lambda job, _, seen=seen: len(seen.by_job[job]) == 1 and queued[0].set()
                )
            for i in range(6):  # queued in this order: the last of each era waits longest
                mode, client = ("auto", modern) if i % 2 else ("legacy", legacy)

                async def ask(client=client, mode=mode, i=i) -> None:
                    answers[mode].append(await call(client, f"caller {i} {LONG_MESSAGE}"))

                queued[0] = anyio.Event()
                tg.start_soon(ask)
                await queued[0].wait()

    for mode in ("auto", "legacy"):
        assert len(answers[mode]) == 3
        for answer in answers[mode]:
            job_id = answer["jobId"]
            assert answer["status"] == "completed"
            assert notes[mode].everything(job_id) == answer["aiResponse"], (
                "nothing but the answer in `message`"
            )
            assert notes[mode].by_job[job_id][0].meta[STATUS] in ("queued", "running")
            assert notes[mode].by_job[job_id][-1].meta[STATUS] == "completed"
            progress = [n.progress for n in notes[mode].by_job[job_id]]
            assert progress == sorted(set(progress)), "progress rises with every notification"
        waited = [a["jobId"] for a in answers[mode] if notes[mode].keepalives(a["jobId"])]
        assert waited, f"{mode}: a caller that waited over 5 s in the queue got keep-alives"
        assert not notes[mode].unlabelled


class Killer:
    """Kills the worker process running attempt `a` of a job once `words` of its text arrived, for each
    attempt in `attempts` (a listener of ProgressNotes)."""

    def __init__(self, redis_client, procs, attempts: set[int], words: int = 5):
        self.redis, self.procs, self.attempts, self.words = redis_client, procs, attempts, words
        self.running: dict[int, str] = {}  # attempt -> worker id
        self.text: dict[int, str] = {}
        self.killed: list[int] = []

    def __call__(self, job_id: str, note) -> None:
        attempt = note.meta.get("mcp-queue/attempt")
        if "mcp-queue/worker" in note.meta:
            self.running[attempt] = note.meta["mcp-queue/worker"]
        if note.message:
            self.text[attempt] = self.text.get(attempt, "") + note.message
        if attempt in self.attempts and len(self.text.get(attempt, "").split()) >= self.words:
            self.attempts.discard(attempt)
            beat = json.loads(self.redis.get(keys.worker(self.running[attempt])))
            (proc,) = [p for p in self.procs if p.pid == beat["pid"]]  # only a process this test started
            proc.send_signal(signal.SIGKILL)
            self.killed.append(proc.pid)


@ERAS
async def test_a_worker_killed_twice_mid_stream_the_text_after_the_last_restart_is_the_answer(
    redis_url, redis_server, workers, messengers, mode, era
):
    procs = workers.start(redis_url, count=3, MOCK_TOKEN_DELAY_MS="30", WORKER_LEASE_SECONDS="2")
    url = messengers.http(messenger_env(redis_url)).url
    notes = ProgressNotes()
    killer = Killer(redis_server.client(), procs, attempts={1, 2})
    notes.listeners.append(killer)
    logs: list[tuple[str, str]] = []

    async def on_log(params) -> None:
        logs.append((params.level, params.data))

    with anyio.fail_after(90):  # logs at warning and above: the restarts (2026: a per-request opt-in)
        async with Client(
            url, mode=mode, message_handler=notes, logging_callback=on_log, log_level="warning"
        ) as client:
            assert client.protocol_version == era
            if era == "2025-11-25":
                await client.set_logging_level("warning")  # pyright: ignore[reportDeprecated]
            answer = await call(client, LONG_MESSAGE)

    job_id = answer["jobId"]
    assert len(killer.killed) == 2, "the workers of attempts 1 and 2 were killed while they streamed"
    assert answer["status"] == "completed" and answer["attempt"] == 3
    assert answer["aiResponse"] == expected_text(LONG_MESSAGE)
    assert killer.text[1] and killer.text[2], "text of the dead attempts reached the client first"
    restarts = [n.meta[RESTART] for n in notes.by_job[job_id] if RESTART in n.meta]
    assert restarts == [2, 3]
    assert notes.answer(job_id) == answer["aiResponse"], (
        "from the last restart on, the messages are the answer"
    )
    assert logs == [
        ("warning", f"job {job_id} restarted on worker {killer.running[n]}, attempt {n}") for n in (2, 3)
    ]
    for note in notes.by_job[job_id]:
        if RESTART in note.meta:
            assert note.message is None and note.meta[JOB_ID] == job_id


@ERAS
async def test_tool_calls_are_in_meta_only_and_the_messages_stay_the_answer(
    redis_url, workers, messengers, openai_server, tmp_path, mode, era
):
    servers = json.dumps({"clock": {"command": sys.executable, "args": [CLOCK]}})
    openai_server.script(
        reply="The clock says", tool_preamble="Let me look.", tool_calls=[("clock__now", "{}")]
    )
    start_openai_workers(workers, redis_url, openai_server, MCP_SERVERS=servers)
    url = messengers.http(messenger_env(redis_url, MCP_SERVERS=servers, MCP_EXPOSE_SERVERS="clock")).url
    notes = ProgressNotes()
    with anyio.fail_after(60):
        async with Client(url, mode=mode, message_handler=notes) as client:
            assert client.protocol_version == era
            answer = (
                await client.call_tool(
                    "send_message_to_ai",
                    {"message": "What time is it?", "mcp_servers": ["clock"]},
                    progress_callback=want_progress,
                )
            ).structured_content
            forwarded = await client.call_tool("clock/now", {}, progress_callback=want_progress)

    job_id = answer["jobId"]
    assert answer["status"] == "completed" and PREFIX in answer["aiResponse"]
    assert notes.everything(job_id) == answer["aiResponse"], "tool notices are not in `message`"
    (call,) = [n.meta[TOOL_CALL] for n in notes.by_job[job_id] if TOOL_CALL in n.meta]
    (result,) = [n.meta[TOOL_RESULT] for n in notes.by_job[job_id] if TOOL_RESULT in n.meta]
    assert (call["server"], call["tool"], call["arguments"]) == ("clock", "now", {})
    assert result["result"].startswith(PREFIX) and result["isError"] is False

    # a forwarded `server/tool` call: its job's progress is status and notices, never a message
    assert forwarded.meta is not None
    forwarded_job = forwarded.meta[JOB_ID_META]
    assert not forwarded.is_error and text_of(forwarded).startswith(PREFIX)
    assert notes.by_job[forwarded_job], "the forwarded call's progress came"
    assert notes.everything(forwarded_job) == ""
    assert any(TOOL_RESULT in n.meta for n in notes.by_job[forwarded_job])
    assert notes.by_job[forwarded_job][-1].meta[STATUS] == "completed"
