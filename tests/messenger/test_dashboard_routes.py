"""The dashboard's routes in-process (the whole HTTP app with its guard, on an embedded runtime):
only the operator lists, reads, cancels and retries jobs; a tenant's key gets 403 on every route,
whoever owns the job; junk in Redis and odd requests get one line, never a traceback."""

from __future__ import annotations

import json

import httpx2 as httpx
import pytest
from runtimes import embedded

from messenger.dashboard.views import snapshot
from messenger.serve import http_app
from shared import keys
from shared.models import ChatRequest

ALICE, BOB, OPS = "alice-key-0123456789", "bob-key-0123456789", "ops-key-0123456789"
JSON = {"content-type": "application/json"}


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@pytest.fixture
async def keyed(clean_env):
    clean_env.setenv("MCP_API_KEYS", json.dumps({"alice": ALICE, "bob": BOB}))
    clean_env.setenv("MCP_ADMIN_KEY", OPS)
    async with embedded(clean_env, 30) as runtime:
        app = http_app(runtime, "http", "127.0.0.1")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as http:
            yield runtime, http


async def test_a_tenant_key_can_neither_see_nor_cancel_nor_retry_any_job(keyed):
    runtime, http = keyed
    job_id = await runtime.queue.submit(ChatRequest(message=" ".join(["long"] * 30)), caller="alice")
    for key in (BOB, ALICE):  # another tenant's job, and even its own: the dashboard is the operator's
        for method, path in [("GET", "/dashboard/jobs"), ("GET", f"/dashboard/jobs/{job_id}"),
                             ("POST", f"/dashboard/jobs/{job_id}/cancel"), ("POST", f"/dashboard/jobs/{job_id}/retry"),
                             ("GET", "/dashboard/series"), ("GET", "/dashboard/events")]:  # fmt: skip
            r = await http.request(method, path, headers=auth(key) | JSON, content=b"{}")
            assert r.status_code == 403 and "MCP_ADMIN_KEY" in r.json()["error"], (key, path)
        assert (
            await http.post(f"/dashboard/jobs/{job_id}/cancel?token={key}", headers=JSON)
        ).status_code == 401
    assert (await runtime.jobs.get(job_id)).status in ("queued", "running")  # untouched

    listed = (await http.get("/dashboard/jobs", headers=auth(OPS))).json()
    assert [(j["job_id"], j["tenant"]) for j in listed] == [(job_id, "alice")]
    cancelled = await http.post(f"/dashboard/jobs/{job_id}/cancel", headers=auth(OPS) | JSON, content=b"{}")
    assert cancelled.json() == {"job_id": job_id, "status": "cancelled"}
    retried = await http.post(f"/dashboard/jobs/{job_id}/retry", headers=auth(OPS) | JSON, content=b"{}")
    again = retried.json()["job_id"]
    assert again != job_id and await runtime.redis.get(keys.owner(again)) == b"alice"  # still alice's job
    assert (await runtime.jobs.wait(again, timeout=30)).status == "completed"


async def test_a_job_reads_whole_with_its_request_events_and_attempts(keyed):
    runtime, http = keyed
    done = await runtime.jobs.run(ChatRequest(message="Explain queues", model="mock-1"), caller="bob")
    detail = (await http.get(f"/dashboard/jobs/{done.job_id}", headers=auth(OPS))).json()
    assert detail["job"]["aiResponse"] == done.ai_response and detail["job"]["status"] == "completed"
    assert detail["tenant"] == "bob" and detail["request"]["message"] == "Explain queues"
    assert [e["type"] for e in detail["events"]] == ["start", "tokens", "done"]
    assert detail["events"][1]["chars"] == len(done.ai_response)  # however many events carried it
    (attempt,) = detail["attempts"]
    assert attempt["outcome"] == "completed" and attempt["worker_id"] == done.worker_id
    assert attempt["tokens"] == done.usage.completion_tokens

    other = await runtime.queue.submit(ChatRequest(message="something else"), caller="alice")
    await runtime.jobs.cancel(other)

    async def ids(**params) -> list[str]:
        r = await http.get("/dashboard/jobs", params=params, headers=auth(OPS))
        return [j["job_id"] for j in r.json()]

    assert await ids() == [other, done.job_id]  # newest first
    assert await ids(status="cancelled") == [other] and await ids(tenant="bob") == [done.job_id]
    assert await ids(q="EXPLAIN") == [done.job_id] and await ids(q=other[:8]) == [other]
    assert (
        await ids(model="mock-1", status="completed") == [done.job_id]
        and await ids(q="nothing like it") == []
    )
    retry_done = await http.post(
        f"/dashboard/jobs/{done.job_id}/retry", headers=auth(OPS) | JSON, content=b"{}"
    )
    assert retry_done.status_code == 409 and "only a failed or cancelled job" in retry_done.json()["error"]


async def test_junk_and_odd_requests_get_one_line(keyed):
    runtime, http = keyed
    job_id = await runtime.queue.submit(ChatRequest(message="hi"), caller="alice")
    await runtime.jobs.wait(job_id, timeout=30)
    await runtime.redis.set(keys.result(job_id), b"\x00not json")  # a damaged result
    await runtime.redis.zadd(keys.RECENT_JOBS, {"junk\nid": 1, "x" * 300: 2})
    await runtime.redis.set(keys.series(123), "not a hash")
    for beat in ({"worker_id": "w1", "running_jobs": ["a"], "last_seen": "yesterday"},
                 {"worker_id": "w2", "running_jobs": "x"}, {"worker_id": "w3", "running_jobs": {"<b>": 1}}):  # fmt: skip
        await runtime.redis.set(keys.worker(beat["worker_id"]), json.dumps(beat), ex=60)
    ops = auth(OPS)
    rows = (await http.get("/dashboard/jobs?limit=abc&status=<b>", headers=ops)).json()
    assert rows == []  # no job has the status "<b>"
    (row,) = (await http.get("/dashboard/jobs", headers=ops)).json()
    assert row["job_id"] == job_id and row["status"] == "failed" and "damaged" in row["error"]
    assert (await http.get("/dashboard/series?minutes=-5", headers=ops)).json()["step_seconds"] == 60
    shot = await snapshot(runtime)  # hand-written heartbeats: still a picture, every worker in it
    assert [w["running_jobs"] for w in shot["workers"] if w["worker_id"] in ("w1", "w2", "w3")] == [
        ["a"],
        [],
        ["<b>"],
    ]
    missing = await http.get("/dashboard/jobs/no-such-job", headers=ops)
    assert missing.status_code == 404 and "no job with id" in missing.json()["error"]
    form = await http.post(f"/dashboard/jobs/{job_id}/cancel", headers=ops, content=b"a=b")
    forged = await http.post(
        f"/dashboard/jobs/{job_id}/retry", headers=ops | JSON | {"sec-fetch-site": "cross-site"}
    )
    assert (form.status_code, forged.status_code) == (415, 403)
