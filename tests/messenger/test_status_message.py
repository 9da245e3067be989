"""A task's statusMessage in each state, one line, from a job's state."""

from messenger.tasks.models import LATEST_CHARS, status_message
from shared.models import CapacityWait, JobResult, ResultUsage


def running(text: str, tokens: int, attempt: int = 1) -> JobResult:
    return JobResult(
        job_id="j", status="running", worker_id="worker-a", attempt=attempt, ai_response=text,
        usage=ResultUsage(completion_tokens=tokens),
    )  # fmt: skip


def test_queued_tells_its_place_or_that_it_waits():
    def queued(position: int | None) -> str:
        return status_message(JobResult(job_id="j", status="queued", queue_position=position))

    assert queued(None) == "queued: waiting for a worker"
    assert queued(1) == "queued: next in line"
    assert queued(2) == "queued: 1 job ahead"
    assert queued(8) == "queued: 7 jobs ahead"


def test_running_tells_worker_tokens_and_the_latest_words_on_one_line():
    assert status_message(running("", 0)) == "running on worker-a: 0 tokens so far"
    long = "line one\nline two " + "x" * 200 + " the end."
    told = status_message(running(long, 60, attempt=2))
    assert told.startswith("running on worker-a (attempt 2): 60 tokens so far; latest: …")
    assert "\n" not in told and told.endswith(" the end.")
    assert len(told.split("latest: …", 1)[1]) == LATEST_CHARS


def test_running_but_waiting_for_capacity_names_the_model_the_limit_and_until_when():
    def waiting(limit: str, until: float | None) -> str:
        wait = CapacityWait(model="gpt-4o", limit=limit, since=0, until=until)
        return status_message(JobResult(job_id="j", status="running", waiting_for=wait))

    assert waiting("rpm", 1_700_000_431.4) == "waiting for capacity: gpt-4o rpm until 22:20:31 UTC"
    assert waiting("cooldown", 0) == "waiting for capacity: gpt-4o cooldown until 00:00:00 UTC"
    assert waiting("concurrency", 99.0) == "waiting for capacity: gpt-4o concurrency until a slot frees"
    assert waiting("turn", None) == "waiting for capacity: gpt-4o turn until the jobs ahead have their turn"
