"""What the operator's commands rest on, in-process: a job named by a prefix of its id, a finished job
run again for the tenant who sent it, health that tells waiting from running and a provider that is
down from one that is quiet, the Claude Desktop entry merged into a config, and a start that never
loads the MCP SDK."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from mcp import Client
from readers import text_of

from messenger.dashboard.views import snapshot
from messenger.health import providers, queue_counts, report
from messenger.hub import EventHub
from messenger.install import install
from messenger.job_ids import full_id
from messenger.jobs import JobClient, retry_job
from messenger.queue import JobQueue
from messenger.runtime import Runtime
from messenger.server import build_server
from shared import dead_letter, keys
from shared.errors import InvalidRequest, JobNotFound
from shared.models import ChatRequest
from shared.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def jobs(redis, clean_env) -> JobClient:
    settings = load_settings(redis_url="memory://", ai_provider="mock")
    return JobClient(redis, EventHub(redis), settings, JobQueue(redis, settings))


async def test_a_unique_prefix_names_its_job_and_a_short_or_shared_one_is_refused(jobs):
    for job_id in ("aaaaaa111111", "aaaaaa222222", "bbbbbb333333"):
        await jobs.queue.submit(ChatRequest(message="hi"), caller="t", job_id=job_id)
    assert await full_id(jobs, "bbbbbb") == "bbbbbb333333"
    assert await full_id(jobs, "aaaaaa1") == "aaaaaa111111"
    assert await full_id(jobs, "aaaaaa222222") == "aaaaaa222222"
    with pytest.raises(InvalidRequest, match="matches 2 jobs: give more characters"):
        await full_id(jobs, "aaaaaa")
    with pytest.raises(InvalidRequest, match="at least 6 characters"):
        await full_id(jobs, "bbbbb")
    assert await full_id(jobs, "cccccc") == "cccccc"  # no match: the lookup then says "no such job"


async def test_a_cancelled_job_runs_again_under_a_new_id_for_its_own_tenant(jobs):
    await jobs.queue.submit(ChatRequest(message="again", model="mock-1"), caller="tenant-a", job_id="job-one")
    assert (await jobs.cancel("job-one")).status == "cancelled"
    new_id = await retry_job(jobs, "job-one")
    assert new_id != "job-one"
    assert (await jobs.get(new_id)).status == "queued"
    assert await jobs.redis.get(keys.owner(new_id)) == b"tenant-a"
    with pytest.raises(InvalidRequest, match="is queued: only a failed or cancelled job can be retried"):
        await retry_job(jobs, new_id)
    with pytest.raises(JobNotFound):
        await retry_job(jobs, "never-was")


async def test_a_dead_job_runs_again_from_its_dead_letter_entry_and_is_found_by_prefix(jobs):
    await jobs.queue.submit(ChatRequest(message="buried"), caller="t", job_id="deadbeef-1")
    raw = await jobs.redis.get(keys.job("deadbeef-1"))
    assert await dead_letter.bury(jobs.redis, b"deadbeef-1", raw, "a worker died on it", function="chat")
    await jobs.redis.zrem(keys.RECENT_JOBS, "deadbeef-1")  # known only to the dead letters now
    assert await full_id(jobs, "deadbeef") == "deadbeef-1"
    new_id = await retry_job(jobs, "deadbeef-1")
    assert (await jobs.get(new_id)).status == "queued"


def _beat(worker_id: str, running=(), provider_error=None, seen_at=0.0, provider="mock") -> dict:
    return {
        "worker_id": worker_id, "provider": provider, "provider_error": provider_error,
        "provider_seen_at": seen_at, "running_jobs": dict.fromkeys(running, 1), "last_seen": time.time(),
    }  # fmt: skip


async def test_every_surface_counts_the_waiting_jobs_apart_from_the_running_ones(jobs):
    """Waiting: queued, not started. health, check_health, list_jobs, /metrics and the dashboard say
    the same numbers, and the same words when no worker is live."""
    runtime = Runtime(jobs.settings, jobs.redis, jobs.hub, jobs, jobs.queue)
    nobody = await snapshot(runtime)
    assert (
        not nobody["workers"] and nobody["no_worker"] == (await report(jobs.settings, jobs.redis))["problem"]
    )
    assert "live worker" not in (ROOT / "messenger" / "dashboard" / "page.html").read_text()  # it shows that
    for job_id in ("j1", "j2", "j3"):
        await jobs.queue.submit(ChatRequest(message="hi"), caller="t", job_id=job_id)
    # arq keeps a running job in its queue: j1 is held by a worker
    assert await queue_counts(jobs.redis, [_beat("w1", running=["j1"])]) == (2, 1)
    await jobs.redis.set(keys.worker("w1"), json.dumps(_beat("w1", running=["j1"])))
    found = await report(jobs.settings, jobs.redis)
    assert (found["queue_depth"], found["running"]) == (2, 1)
    async with Client(build_server(runtime)) as client:
        listed = (await client.call_tool("list_jobs", {})).structured_content
        health = json.loads(text_of(await client.call_tool("check_health", {})))
    assert listed is not None and (listed["queueDepth"], listed["running"]) == (2, 1)
    assert (health["queue_depth"], health["running"]) == (2, 1)
    scraped = (await runtime.metrics.scrape(runtime)).decode()
    assert "mcpq_queue_depth 2.0" in scraped and "mcpq_jobs_running 1.0" in scraped
    shot = await snapshot(runtime)
    assert (shot["queue_depth"], shot["running"]) == (2, 1)


def test_the_newest_call_outcome_decides_and_a_quiet_worker_cannot_vouch_for_the_provider():
    now = time.time()
    quiet = _beat("w1", seen_at=now - 60)  # its last call, a minute ago, went through
    failed = _beat("w2", provider_error="cannot connect to the provider", seen_at=now - 1)
    assert providers([quiet, failed])["mock"]["reachable"] is False
    recovered = _beat("w1", seen_at=now)
    assert providers([recovered, failed])["mock"]["reachable"] is True


async def test_health_says_no_live_worker_instead_of_provider_not_reachable(jobs):
    found = await report(jobs.settings, jobs.redis)
    assert found["status"] == "degraded" and found["provider_reachable"] is None
    assert found["problem"].startswith("no live worker")
    now = time.time()
    await jobs.redis.set(keys.worker("w2"), json.dumps(_beat("w2", provider_error="HTTP 503", seen_at=now)))
    found = await report(jobs.settings, jobs.redis)
    assert found["provider_reachable"] is False and "provider mock not reachable" in found["problem"]


def _install(config: Path, *env: str) -> int:
    return install(
        SimpleNamespace(client="claude-desktop", config=str(config), name="mcp-queue", env=list(env))
    )


def test_install_merges_an_entry_with_absolute_paths_and_keeps_the_rest(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("REDIS_URL", "redis://localhost:6379/0")
    config = tmp_path / "claude_desktop_config.json"
    config.write_text(json.dumps({"mcpServers": {"other": {"command": "x"}}, "theme": "dark"}))
    assert _install(config, "LOG_LEVEL=DEBUG") == 0
    written = json.loads(config.read_text())
    assert written["theme"] == "dark" and written["mcpServers"]["other"] == {"command": "x"}
    entry = written["mcpServers"]["mcp-queue"]
    assert Path(entry["command"]).is_absolute() and Path(entry["command"]).exists()
    assert entry["args"][-1] == "serve" and all(Path(a).is_absolute() for a in entry["args"] if "/" in a)
    assert entry["env"] == {"REDIS_URL": "redis://localhost:6379/0", "LOG_LEVEL": "DEBUG"}
    assert _install(config) == 0  # again: replaced, not doubled
    assert "replaced 'mcp-queue'" in capsys.readouterr().out


def test_install_leaves_a_file_it_cannot_read_as_it_was(tmp_path, capsys):
    config = tmp_path / "claude_desktop_config.json"
    config.write_text("{not json")
    assert _install(config) == 2
    assert config.read_text() == "{not json"
    assert capsys.readouterr().err.count("\n") == 1
    assert _install(tmp_path / "new" / "config.json", "NOEQUALS") == 2


def test_the_commands_that_need_no_mcp_never_import_it():
    """`import mcp` alone costs over a second: --help, jobs, job, stats, health, top must not pay it
    (nor OpenTelemetry, which only a submit uses); `ask` in embedded mode starts a runtime and its
    worker, and needs no MCP client or server either."""
    heavy = "{'mcp', 'mcp_types', 'starlette', 'anyio', 'worker', 'opentelemetry'}"
    commands = (
        "import sys, messenger.cli, messenger.commands, messenger.top, messenger.install; "
        f"messenger.cli._parser(); print(sorted({{m.split('.')[0] for m in sys.modules}} & {heavy}))"
    )
    embedded_ask = (
        "import sys, messenger.cli; assert messenger.cli.main(['ask', 'hi']) == 0; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'mcp', 'mcp_types', 'starlette', 'anyio'}))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "AI_", "MCP_"))}
    for probe in (commands, embedded_ask):
        done = subprocess.run(
            [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60, env=env
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout
