"""Human in the loop: the question a paused job waits on, and the caller's answers, as both the
worker (worker/pause.py) and the messenger (messenger/approvals.py) read them.

`mcpq:input:<job_id>` is a hash of JSON values (shared/keys.py): `question` while one waits for an
answer, `answer:<step>` for each answer given (kept until the job ends: a re-run after a crash needs
it again), `base` (attempts before the last pause), `parked` (no worker holds the job) and `resumed` (the last
park that found its answer come first: a park sent again after a lost reply knows it ran).
A question's key is `<job_id>:<step>`, the step of the tool call it asks about: unique for the job's
lifetime, the same as that call's idempotency key.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from pydantic import BaseModel, Field, ValidationError
from redis.exceptions import ResponseError

from shared import keys, turns
from shared.models import Question

log = logging.getLogger("shared.approvals")

NOTE_MAX_CHARS = 2000  # of the text an answer may give the model
RESUME_SCORE = turns.band("high")  # an answered or expired job goes to the head of the queue: it waited

# Lua, first in each script that writes `mcpq:input:waiting`: junk there (written by hand) is started
# afresh, or the script would fail half-way, its earlier writes kept (a job off the queue, in no set).
WAITING_LUA = """
local waiting_kind = redis.call('TYPE', waiting).ok
if waiting_kind ~= 'zset' and waiting_kind ~= 'none' then redis.call('DEL', waiting) end
-- a parked job back at the head of the queue (score: RESUME_SCORE), the workers woken for it
local function requeue(id)
  redis.call('ZREM', waiting, id)
  redis.call('ZADD', queue, score, id)
  redis.call('PUBLISH', wakeup, id)
end
"""


def forget(pipe, job_id: str) -> None:
    """Queue on `pipe` what a job's ending takes with it: its question, answers and waiting place."""
    pipe.delete(keys.input_request(job_id))
    pipe.zrem(keys.INPUT_WAITING, job_id)


class Answer(BaseModel):
    approved: bool
    note: str | None = Field(None, max_length=NOTE_MAX_CHARS)  # given to the model with a refusal
    answered_at: float = 0.0


class InputRecord(BaseModel):
    question: Question | None = None
    answers: dict[int, Answer] = {}  # by step
    base: int = 0  # attempts before the last pause: a re-run's attempt is base + arq's try
    parked: bool = False


def ask_text(server: str, tool: str, arguments: dict[str, Any] | str) -> str:
    shown = json.dumps(arguments, ensure_ascii=False) if isinstance(arguments, dict) else arguments
    return f"Allow the tool call {server}/{tool} {shown[:300]}?"


async def read(redis, job_id: str) -> InputRecord:
    """The job's record (empty when it has none); a damaged field is logged and read as missing."""
    key = keys.input_request(job_id)
    try:
        raw = await redis.hgetall(key)
    except ResponseError as e:  # not a hash: written by hand
        log.warning("job %s: %s cannot be read (%s); read as empty", job_id, key, str(e)[:100])
        return InputRecord()
    record = InputRecord()
    for field, value in raw.items():
        name = field.decode(errors="replace") if isinstance(field, bytes) else str(field)
        try:
            if name == "question":
                record.question = Question.model_validate_json(value)
            elif name.startswith("answer:"):
                record.answers[int(name[7:])] = Answer.model_validate_json(value)
            elif name == "base":
                record.base = max(0, int(json.loads(value)))
            elif name == "parked":
                record.parked = bool(json.loads(value))
        except (ValidationError, ValueError, TypeError):
            log.warning("job %s: skipping the damaged field %.40r of %s", job_id, name, key)
    return record
