"""Every Redis key and channel name, in one place.

A user with `redis-cli` and a developer reading the code see the same names. arq's own keys are
listed first (they must match `arq.constants`); everything of ours lives under `mcpq:`.
"""

# arq's keys (one queue, the default name)
QUEUE = "arq:queue"  # zset: job id -> run-at time in ms
JOB_PREFIX = "arq:job:"  # the job definition (JSON), deleted when the job finishes
IN_PROGRESS_PREFIX = "arq:in-progress:"  # exists while a worker holds the job
RESULT_PREFIX = "arq:result:"  # the finished job's result (JSON)
RETRY_PREFIX = "arq:retry:"  # how many times the job has been started
RETRY_KEPT_SECONDS = 88_400  # arq's: how long a job's retry counter outlives its last start
ABORT_SET = "arq:abort"  # zset of job ids asked to stop

# ours
WAKEUP_CHANNEL = "mcpq:wakeup"  # pub/sub: "a job was enqueued or cancelled, poll now"
# idle workers (shared/handoff.py): zset of {"worker": id, "lease_ms": n} -> free slots it offers, and
# each worker's channel, on which the enqueue hands it a job, leased, with what it needs to start (JSON)
IDLE_WORKERS = "mcpq:workers:idle"
HANDOFF_PREFIX = "mcpq:handoff:"
# + <worker id>:<count>: one claim's answer without the jobs' values, kept a minute (written when the
# claim leased a job or changed the worker's offer): the claim sent again after a lost reply
# (shared.connection.CLAIM's one retry) answers the same, not leasing its jobs unheard of
CLAIM_PREFIX = "mcpq:claim:"
CLAIM_KEPT_SECONDS = 60
RECENT_JOBS = "mcpq:jobs:recent"  # zset: job id -> enqueue time in ms (+µs: enqueue order), trimmed
RECENT_JOBS_KEPT = 1000
WORKER_PREFIX = "mcpq:worker:"  # heartbeat JSON, expires when the worker stops beating
EVENTS_PREFIX = "mcpq:events:"  # pub/sub channel per job, one JSON event per message
STREAM_PREFIX = "mcpq:stream:"  # Redis Stream per job: the same events, for replay

STREAM_MAXLEN = (
    20_000  # events kept per job (approximate trim); a reply longer than this replays from the result
)
KEEP_RESULT_SECONDS = 3600  # arq's default keep_result: how long a finished job's result is kept
STREAM_TTL_SECONDS = KEEP_RESULT_SECONDS  # a running job's stream (the heartbeat renews it)
# A finished job's stream is kept this long after its ending, for followers a moment behind and
# resumes by event seq; later readers are told the story from the stored result (collector.retold),
# so Redis holds a finished job's answer once, not once more per token for an hour.
ENDED_STREAM_SECONDS = 60
JOB_EXPIRES_MS = 86_400_000  # arq's expires_extra_ms: a job not started within a day fails as expired
DEAD_LETTER = "mcpq:dead"  # hash: job id -> JSON {job_id, reason, raw (capped), function, at} (dead_letter)
DEAD_LETTER_ORDER = "mcpq:dead:order"  # zset: job id -> ms when buried; keeps the hash to the newest
DEAD_LETTER_KEPT = 1000
HEARTBEAT_SECONDS = 2.0
HEARTBEAT_TTL_SECONDS = 3 * HEARTBEAT_SECONDS  # a worker missing three beats is gone


def job(job_id: str) -> str:
    return JOB_PREFIX + job_id


def in_progress(job_id: str) -> str:
    return IN_PROGRESS_PREFIX + job_id


def result(job_id: str) -> str:
    return RESULT_PREFIX + job_id


def claim(nonce: str) -> str:
    return CLAIM_PREFIX + nonce


def retry(job_id: str) -> str:
    return RETRY_PREFIX + job_id


def events(job_id: str) -> str:
    return EVENTS_PREFIX + job_id


def stream(job_id: str) -> str:
    return STREAM_PREFIX + job_id


def worker(worker_id: str) -> str:
    return WORKER_PREFIX + worker_id


def handoff(worker_id: str) -> str:
    return HANDOFF_PREFIX + worker_id


CANCEL_PREFIX = (
    "mcpq:cancel:"  # set by cancel_job; tells the worker a CancelledError is a user's stop, not a shutdown
)


def cancel(job_id: str) -> str:
    return CANCEL_PREFIX + job_id


# the tenant a job belongs to (a name from MCP_API_KEYS, key-<8 hex> for MCP_API_KEY, or "operator");
# lives as long as the job and its result; the worker reads it to keep the job's data with its tenant
OWNER_PREFIX = "mcpq:owner:"


def owner(job_id: str) -> str:
    return OWNER_PREFIX + job_id


# job:// resource subscriptions of one MCP session (2025-11-25, HTTP): set of uris; any replica's
# resources/unsubscribe removes one, and the replica following that job stops notifying
SUBSCRIPTIONS_PREFIX = "mcpq:subscriptions:"
SUBSCRIPTIONS_TTL_SECONDS = 86_400  # from the latest subscribe of the session
# + <nonce of one resources/subscribe>: written with the URI it added, so that the same write sent
# again (its reply lost) knows the URI for its own and follows the job
SUBSCRIBED_PREFIX = "mcpq:subscribed:"
SUBSCRIBED_TTL_SECONDS = 120  # far past redis-py's retries


# the MCP log level a 2025-11-25 session set with logging/setLevel, read by any replica
LOG_LEVEL_PREFIX = "mcpq:log-level:"
LOG_LEVEL_TTL_SECONDS = 86_400  # from the session's latest logging/setLevel


def log_level(session_id: str) -> str:
    return LOG_LEVEL_PREFIX + session_id


def subscriptions(session_id: str) -> str:
    return SUBSCRIPTIONS_PREFIX + session_id


def subscribed(nonce: str) -> str:
    return SUBSCRIBED_PREFIX + nonce


# usage and cost, summed by every worker (hashes of counters: requests, completed, failed, cancelled,
# prompt_tokens, completion_tokens, total_tokens, cost_usd, unpriced, latency_ms)
USAGE_TOTAL = "mcpq:usage:total"
USAGE_MODELS = "mcpq:usage:models"  # set of the model names that have a usage hash
USAGE_COUNTED_PREFIX = (
    "mcpq:usage:counted:"  # a job whose usage is already counted (a re-run never counts twice)
)
USAGE_LATENCY_KEPT = 1000  # latencies kept per model for the p95

# conversations and the worker-side log of processed jobs (JSON values), each kept per tenant
CONVERSATION_PREFIX = "mcpq:conversation:"  # + <tenant>:<conversation id>: list of turns, oldest first
CONVERSATIONS_PREFIX = "mcpq:conversations:"  # + <tenant>: zset of conversation id -> last turn time (s)
RECEIVED = "mcpq:received"  # list: newest first, what workers processed, every tenant's (the operator's view)
RECEIVED_KEPT = 1000
TENANTS = "mcpq:tenants"  # set: every tenant that has had a job counted (the operator's stats list them)

MODEL_DEFAULTS = "mcpq:config:model-defaults"  # JSON: the global default_model, temperature, max_tokens

# budgets and rate limits (admission)
BUDGET_RESERVED = "mcpq:budget:reserved"  # hash: job id -> USD held back until the job settles
BUDGET_RESERVED_TENANT = "mcpq:budget:reserved-tenant"  # hash: job id -> the tenant it is held for
BUDGET_RESERVED_UNTIL = "mcpq:budget:reserved-until"  # zset: job id -> ms when the hold is checked again
BUDGET_SPENT_PREFIX = "mcpq:budget:spent:"  # + hour:<YYYY-MM-DDTHH> / day:<YYYY-MM-DD>: settled USD
RATE_PREFIX = "mcpq:rate:"  # + <tenant>:<minute>: requests admitted in that minute
ADMITTED_PREFIX = "mcpq:admitted:"  # + <job id>: its worst case, once admitted (an admission sent again)


def usage_model(model: str) -> str:
    return "mcpq:usage:model:" + model


def usage_day(day: str) -> str:
    return "mcpq:usage:day:" + day


def usage_latency(model: str) -> str:
    return "mcpq:usage:latency:" + model


def usage_counted(job_id: str) -> str:
    return USAGE_COUNTED_PREFIX + job_id


def conversation(tenant: str, conversation_id: str) -> str:
    return f"{CONVERSATION_PREFIX}{tenant}:{conversation_id}"


def conversations(tenant: str) -> str:
    return CONVERSATIONS_PREFIX + tenant


def received(tenant: str) -> str:
    """One tenant's received-messages list (the unsuffixed RECEIVED holds every tenant's)."""
    return f"{RECEIVED}:{tenant}"


def model_defaults(tenant: str) -> str:
    """A tenant's own defaults, layered over the global MODEL_DEFAULTS."""
    return f"{MODEL_DEFAULTS}:{tenant}"


def usage_tenant(tenant: str, part: str) -> str:
    """A tenant's own usage: part is `total`, `models`, `model:<m>`, `day:<d>` or `latency:<m>`,
    shaped like the all-tenant keys above."""
    return f"mcpq:usage:tenant:{tenant}:{part}"


def spent_tenant(tenant: str, window: str) -> str:
    """What a tenant spent (settled USD) in `hour:<YYYY-MM-DDTHH>` or `day:<YYYY-MM-DD>`."""
    return f"{BUDGET_SPENT_PREFIX}tenant:{tenant}:{window}"


def spent_hour(hour: str) -> str:
    return BUDGET_SPENT_PREFIX + "hour:" + hour


def spent_day(day: str) -> str:
    return BUDGET_SPENT_PREFIX + "day:" + day


def rate(caller: str, minute: int) -> str:
    return f"{RATE_PREFIX}{caller}:{minute}"


def admitted(job_id: str) -> str:
    return f"{ADMITTED_PREFIX}{job_id}"


# priorities and fair turns (shared/turns.py): hash of each tenant's next turn per priority band
# ("next:<band>:<tenant>") and each band's last turn given ("last:<band>")
TURNS = "mcpq:turns"

# 2025-11-25 MCP sessions shared by the messenger replicas (messenger.sessions)
SESSION_PREFIX = "mcpq:session:"  # + <sid>: JSON record; + <sid>:events:<stream>: the session's SSE events
REPLICA_PREFIX = "mcpq:replica:"  # + <replica id>: a live messenger replica (expires 6 s after its last beat)


def session(session_id: str) -> str:
    return SESSION_PREFIX + session_id


def session_events(session_id: str, stream_id: str) -> str:
    return f"{SESSION_PREFIX}{session_id}:events:{stream_id}"


def replica(replica_id: str) -> str:
    return REPLICA_PREFIX + replica_id


# provider capacity (MODEL_LIMITS and upstream 429 cool-downs, worker/capacity.py), per model
CAPACITY_PREFIX = "mcpq:capacity:"
CAPACITY_CHANNEL = "mcpq:capacity"  # pub/sub: `free <model>` (a slot freed), `cool <model>` (a 429 cool-down)
CAPACITY_MODELS = "mcpq:capacity:models"  # set: every model that has had a limit or a cool-down
CAPACITY_429S = "mcpq:capacity:429s"  # hash: model -> upstream 429s received, by every worker
CAPACITY_WAITING_PREFIX = "mcpq:capacity:waiting:"  # + job id: JSON while the job waits for capacity
# + a nonce: one 429's cool-down, counted (a cool-down redis-py sends again after a lost reply counts none)
CAPACITY_COOLED_PREFIX = "mcpq:capacity:cooled:"
# an hour: it must outlive redis-py sending the cool-down again, for as long as a worker's retries
# last (~80-90 s of a Redis that refuses connects while it restarts; a host that drops packets makes
# each connect wait for the OS) -- a resend after the key expired counts the 429 again and cools the
# model down afresh. A few hundred bytes a 429, and 429s come at most once a cool-down a worker.
CAPACITY_COOLED_SECONDS = 3600


def capacity(part: str, model: str) -> str:
    """A model's capacity state: part is `rpm` / `tpm` (the next free time in ms, GCRA), `slots`
    (zset: holder -> lease end in ms), `cooldown` (expires when the cool-down ends) or `strikes`."""
    return f"{CAPACITY_PREFIX}{part}:{model}"


def capacity_waiting(job_id: str) -> str:
    return CAPACITY_WAITING_PREFIX + job_id


def capacity_cooled(nonce: str) -> str:
    return CAPACITY_COOLED_PREFIX + nonce


# the dashboard's history (shared/timeseries.py): one hash per minute, + <unix minute>
SERIES_PREFIX = "mcpq:series:"
SERIES_KEPT_SECONDS = 86_400  # a day of minutes: at most 1,440 small hashes


def series(minute: int) -> str:
    return f"{SERIES_PREFIX}{minute}"


# a tool loop's journal (worker/journal.py): hash of step -> JSON (a finished model turn, or a tool's
# result), written with the event that announces it; renewed by every write, and kept
# ENDED_STREAM_SECONDS once the job ended (like its stream)
JOURNAL_PREFIX = "mcpq:journal:"
JOURNAL_TTL_SECONDS = JOB_EXPIRES_MS // 1000  # a job not run again within a day is gone: so is its journal


def journal(job_id: str) -> str:
    return JOURNAL_PREFIX + job_id


# human in the loop (worker/pause.py, messenger/approvals.py): a job paused for its caller's answer.
# A hash of JSON values: `question` (the one waiting for an answer, gone once answered), `answer:<step>`
# (each answer, kept for re-runs until the job ends), `base` (attempts before the last pause), `parked`
# (no worker holds the job: an answer puts it back on the queue). Deleted when the job ends.
INPUT_PREFIX = "mcpq:input:"
INPUT_WAITING = (
    "mcpq:input:waiting"  # zset: parked job id -> ms when its question expires (INPUT_WAIT_SECONDS)
)


def input_request(job_id: str) -> str:
    return INPUT_PREFIX + job_id
