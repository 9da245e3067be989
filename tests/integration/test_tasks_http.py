"""MCP tasks with the real mcp.Client against `messenger serve` subprocesses (streamable HTTP and
stdio) on real Redis, with a separate worker process answering, in both protocol eras."""

from __future__ import annotations

import anyio
import pytest
from mcp import Client
from mcp_helpers import messenger_env, running_messengers
from processes import WorkerProcesses
from readers import progress_recorder, text_of

from messenger.tasks.client import Tasks, cancel_task, get_task, list_tasks, start_task, task_result
from worker.providers.mock import mock_reply

ERAS = pytest.mark.parametrize(
    ("mode", "era"), [("auto", "2026-07-28"), ("legacy", "2025-11-25")], ids=["modern", "legacy"]
)
LONG_PROMPT = " ".join(f"word{i}" for i in range(60))  # a 56-token answer: about a second at 20 ms a token


def whole_answer(prompt: str) -> str:
    return "".join(mock_reply([{"role": "user", "content": prompt}]))


@pytest.fixture(scope="module")
def stack(redis_server, tmp_path_factory):
    """A worker process (20 ms a token) and an HTTP messenger on the session's real Redis."""

    tmp = tmp_path_factory.mktemp("tasks-stack")
    redis_server.client().flushall()
    workers = WorkerProcesses(redis_server, tmp)
    try:
        workers.start(redis_server.url, count=1, MOCK_TOKEN_DELAY_MS="20")
        with running_messengers(tmp) as messengers:
            yield messengers, messengers.http(messenger_env(redis_server.url)), redis_server.url
    finally:
        workers.stop_all()
        print(f"----- workers -----\n{workers.logs()[-20_000:]}")


async def exercise_tasks(client: Client, statuses: Statuses, era: str) -> None:
    """Call as a task, poll, fetch the result; list; cancel; hear the status notifications."""
    assert client.protocol_version == era

    task = await start_task(client, "send_message_to_ai", {"message": f"a task in {era}"})
    assert task.status == "working"
    seen = [await get_task(client, task.task_id)]
    while not seen[-1].final:
        await anyio.sleep(0.05)
        seen.append(await get_task(client, task.task_id))
    assert seen[-1].status == "completed"
    result = await task_result(client, task.task_id)
    assert not result.is_error, text_of(result)
    assert result.structured_content["jobId"] == task.task_id
    assert result.structured_content["aiResponse"] == whole_answer(f"a task in {era}")

    long = await start_task(client, "send_message_to_ai", {"message": LONG_PROMPT, "max_tokens": 100_000})
    awaited = await start_task(client, "send_message_to_ai", {"message": f"notify me in {era}"})
    assert {task.task_id, long.task_id} <= {t.task_id for t in await list_tasks(client)}
    cancelled = await cancel_task(client, long.task_id)
    assert cancelled.status == "cancelled"
    assert (await task_result(client, long.task_id)).structured_content["status"] == "cancelled"
    assert (await task_result(client, awaited.task_id)).structured_content["status"] == "completed"
    # notifications/tasks(/status) arrive for the task we waited on: each one wakes this wait; the
    # deadline is for a loaded 2-core machine (it was 5 s and once ran out under load)
    with anyio.fail_after(30):
        await statuses.heard((awaited.task_id, "completed"))


async def plain_call_streams_progress(client: Client, era: str) -> None:
    """Without the tasks extension a call waits as before, its tokens arriving as progress."""
    messages, on_progress = progress_recorder()
    plain = await client.call_tool(
        "send_message_to_ai", {"message": f"plain in {era}"}, progress_callback=on_progress
    )
    assert not plain.is_error, text_of(plain)
    assert plain.structured_content["aiResponse"] == whole_answer(f"plain in {era}")
    assert len(messages) >= 2 and "".join(messages) == plain.structured_content["aiResponse"]


class Statuses(list):
    """(task id, status) pairs as notifications bring them; `heard` waits for one, woken by each."""

    def __init__(self):
        super().__init__()
        self.changed = anyio.Event()

    def add(self, pair: tuple) -> None:
        self.append(pair)
        self.changed.set()
        self.changed = anyio.Event()

    async def heard(self, pair: tuple) -> None:
        while pair not in self:
            await self.changed.wait()


def task_client(target, mode: str) -> tuple[Client, Statuses]:
    """A Client that declares the tasks extension, and the task status notifications it hears."""
    statuses = Statuses()

    async def on_status(state) -> None:
        statuses.add((state.task_id, state.status))

    return Client(target, mode=mode, extensions=[Tasks(on_status)]), statuses


@ERAS
async def test_tasks_over_streamable_http(stack, mode, era):
    _, messenger, _ = stack
    client, statuses = task_client(messenger.url, mode)
    with anyio.fail_after(60):
        async with client:
            await exercise_tasks(client, statuses, era)
        async with Client(messenger.url, mode=mode) as plain:
            await plain_call_streams_progress(plain, era)


@ERAS
async def test_tasks_over_stdio(stack, mode, era):
    messengers, _, redis_url = stack
    client, statuses = task_client(messengers.stdio(messenger_env(redis_url)), mode)
    with anyio.fail_after(60):
        async with client:
            await exercise_tasks(client, statuses, era)
        async with Client(messengers.stdio(messenger_env(redis_url)), mode=mode) as plain:
            await plain_call_streams_progress(plain, era)
