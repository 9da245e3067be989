"""Counting a finished job once: usage and cost totals (every tenant's and its own), the budget
settlement, the received-messages log and the conversation turn, in one atomic script.

The `mcpq:usage:counted:<id>` marker makes it idempotent: a job re-run after its worker died, or a
result written twice, is never counted twice. What a dead attempt streamed before its worker died was
paid for too: it is counted, estimated from the job's stream, in usage and budgets; what a re-run took
from the job's journal (worker/journal.py) is in the final attempt's own usage, so only a dead
attempt's text after its last journaled step is counted as dead.
"""

from __future__ import annotations

import functools
import json
import logging
import time

from pydantic_core import to_json
from redis.exceptions import NoScriptError

from shared import damaged, keys, prices, timeseries
from shared.events import ToolCallEvent, ToolResultEvent, parse_event
from shared.handoff import HOLDER_LUA
from shared.scripts import Arg, Args, script
from shared.settings import OPERATOR, TENANT_NAME, UNOWNED
from shared.tokens import estimate_tokens

log = logging.getLogger("worker.accounting")

COUNTED_TTL_SECONDS = 2 * 86_400
OWNER_KEPT_SECONDS = keys.KEEP_RESULT_SECONDS + 300  # a rewritten owner record lives as long as the result

SPENT_HOUR_TTL_SECONDS = 7200  # an hour's spend is read during its hour; kept one more
SPENT_DAY_TTL_SECONDS = 172_800


# The key names a count writes, as shared/keys.py makes them, with a marker (\x01 and a letter) where
# the job's own value goes, written into the script as Lua (NAMES_LUA: `'mcpq:usage:model:' .. c.model`),
# so a job's count carries its tenant, model, hour and id, not ~25 key names (its JSON, and Redis's
# decode of it, were most of a count's cost). `shared`: those of a tenant, model and hour, made once
# a batch (BATCH_LUA `named`); `own`: the job's, each made when the script first reads it.
_T, _M, _D, _H, _J, _C, _N = "\x01t", "\x01m", "\x01d", "\x01h", "\x01j", "\x01c", "\x01n"


def _mine(part: str) -> str:
    return keys.usage_tenant(_T, part)


_NAMES = {
    "shared": dict(
        total=keys.USAGE_TOTAL, by_model=keys.usage_model(_M), by_day=keys.usage_day(_D), tenant_total=_mine("total"),
        tenant_by_model=_mine(f"model:{_M}"), tenant_by_day=_mine(f"day:{_D}"), models=keys.USAGE_MODELS,
        tenant_models=_mine("models"), tenants=keys.TENANTS, latency=keys.usage_latency(_M),
        tenant_latency=_mine(f"latency:{_M}"), received=keys.RECEIVED, tenant_received=keys.received(_T),
        reserved=keys.BUDGET_RESERVED, reserved_tenant=keys.BUDGET_RESERVED_TENANT,
        reserved_until=keys.BUDGET_RESERVED_UNTIL, spent_hour=keys.spent_hour(_H), spent_day=keys.spent_day(_D),
        tenant_spent_hour=keys.spent_tenant(_T, f"hour:{_H}"), tenant_spent_day=keys.spent_tenant(_T, f"day:{_D}"),
        conversations=keys.conversations(_T),
    ),
    "own": dict(
        counted=keys.usage_counted(_J), owner=keys.owner(_J), lease=keys.in_progress(_J), result_key=keys.result(_J),
        record=keys.input_request(_J), conversation=keys.conversation(_T, _C),
        series=keys.series(_N),  # pyright: ignore[reportArgumentType]  (the minute's marker)
    ),
}  # fmt: skip
# the Lua expression of each template's name, from the job's count `c`
_VARS = {"t": "c.tenant", "m": "c.model", "d": "c.day", "h": "c.hour", "j": "c.job_id", "n": "c.minute",
         "c": "(c.conversation_id or '-')"}  # fmt: skip


def _lua(template: str) -> str:
    """A `_NAMES` template as a Lua expression: its text as Lua string literals (every byte but a plain
    one written as \\ddd), its markers as the count's values, joined by `..`."""

    def text(part: str) -> str:
        plain = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:._-"
        return "'" + "".join(chr(b) if b in plain else f"\\{b}" for b in part.encode()) + "'"

    first, *rest = template.split("\x01")
    parts = [text(first)] if first else []
    for part in rest:
        parts += [_VARS[part[0]], *([text(part[1:])] if part[1:] else [])]
    return " .. ".join(parts)


# Lua: `shared_names(c)`, the names of a count's tenant, model and hour; `own[name](c)`, one of its own
NAMES_LUA = (
    "local function shared_names(c)\n  return {"
    + ", ".join(f"{name} = {_lua(t)}" for name, t in _NAMES["shared"].items())
    + "}\nend\nlocal own = {"
    + ", ".join(f"{name} = function(c) return {_lua(t)} end" for name, t in _NAMES["own"].items())
    + "}\n"
)
_BATCH: dict = dict(
    counted_ttl=COUNTED_TTL_SECONDS, owner_ttl=OWNER_KEPT_SECONDS, latencies_kept=keys.USAGE_LATENCY_KEPT,
    received_kept=keys.RECEIVED_KEPT, spent_hour_ttl=SPENT_HOUR_TTL_SECONDS, spent_day_ttl=SPENT_DAY_TTL_SECONDS,
    series_ttl=keys.SERIES_KEPT_SECONDS,
)  # fmt: skip


# One call counts a batch of ended jobs (the jobs whose endings share one MULTI, worker/endings.py):
# each job's marker, and its owner record when Redis lost it (a tenant's: written again so the
# tenant can still read the answer), one by one; then the counts of the jobs counted now are added up
# key by key, so a batch of jobs of one model and tenant costs a counter's HINCRBY once, not once a job
# (about 75 commands a job before). Every job is two values: a JSON object (`prepare`'s dict without its
# None values and its received-messages entry), then that entry; a key that refuses a write (wrong type, a counter that is not a number: damaged or written
# by hand) is skipped and named in the reply of each job that wrote to it; every other key, the budget
# settlement included, is still written. A count that names its run (`holder`: worker/wakeups.py; its
# job's lease, result and input record named from its id) is skipped when the job is another run's now
# (shared.handoff.HOLDER_LUA), in the same MULTI as that run's ending. Answers each job's [counted now (0/1), owner written again
# (0/1), <each key skipped>...], in order.
BATCH_LUA = r"""
local replies, counted, names = {}, {}, {}
local hinc, hflt, htext, hset, incr, itext, expire, trim = {}, {}, {}, {}, {}, {}, {}, {}
local sadd, push, rpush, hdel, zrem, zadd = {}, {}, {}, {}, {}, {}
local function slot(t, key) local s = t[key]; if not s then s = {}; t[key] = s end; return s end
local function add_float(key, field, text)  -- one job's amount goes as given (exact); more are added up
  local s, texts = slot(hflt, key), slot(htext, key)
  texts[field] = s[field] == nil and text
  s[field] = (s[field] or 0) + tonumber(text)
end
local function append(t, key, v) local s = slot(t, key); s[#s + 1] = v end
-- the names of each tenant, model and hour (`_NAMES` shared: the batch's jobs share them), and their
-- six totals; a job's own names (`own`) are made where they are used, each once
local shared, totals_of, sums, priced = {}, {}, {}, {}
local counted_ex = string.format('%d', counted_ttl)  -- (as text once: a number is formatted each call)
local jobs = {}
for i = 1, #counts / 2 do
  local c = cjson.decode(counts[2 * i - 1])
  c.received_entry = counts[2 * i]  -- (JSON itself: beside the count, not escaped inside it)
  -- (one tenant's: a tenant name has no NUL; nor have the hour and day, read from the end)
  local at = c.tenant .. '\0' .. c.model .. '\0' .. c.hour .. '\0' .. c.day
  local n = shared[at]
  if not n then
    n = shared_names(c)
    shared[at] = n
    totals_of[at] = {n.total, n.by_model, n.by_day, n.tenant_total, n.tenant_by_model, n.tenant_by_day}
  end
  names[i] = n
  if c.holder and held_elsewhere(own.lease(c), c.holder, own.result_key(c), own.record(c)) then
    replies[i] = {0, 0}  -- the job is another run's now (worker/endings.py): that run counts it
  else
  local kept = 0
  if c.keep_owner then
    local set = redis.pcall('SET', own.owner(c), c.tenant, 'NX', 'EX', owner_ttl)
    if type(set) == 'table' and set.ok then kept = 1 end
  end
  replies[i] = {0, kept}
  if redis.call('SET', own.counted(c), '1', 'NX', 'EX', counted_ex) then
    replies[i][1] = 1
    counted[#counted + 1] = i
    jobs[i] = c
    local status, latency, dead, cost = c.status, c.latency_ms, c.dead_attempt_tokens, c.cost
    local s = sums[at]  -- (added to its six totals once a batch, below: whole numbers, in any order)
    if not s then  -- the group's first job counted: what its jobs write alike, once
      s = {}
      sums[at] = s
      append(sadd, n.models, c.model)
      append(sadd, n.tenant_models, c.model)
      append(sadd, n.tenants, c.tenant)
      trim[n.latency], trim[n.tenant_latency] = latencies_kept, latencies_kept
      trim[n.received], trim[n.tenant_received] = received_kept, received_kept
    end
    s.requests = (s.requests or 0) + 1
    s[status] = (s[status] or 0) + 1
    s.prompt_tokens = (s.prompt_tokens or 0) + c.prompt_tokens
    s.completion_tokens = (s.completion_tokens or 0) + c.completion_tokens
    s.total_tokens = (s.total_tokens or 0) + c.total_tokens
    s.latency_ms = (s.latency_ms or 0) + latency
    if dead > 0 then s.dead_attempt_tokens = (s.dead_attempt_tokens or 0) + dead end
    if cost then  -- (a float: added job by job, in order, as the first job's text when it is the only one)
      local amount, p = tonumber(cost), priced[at]
      if not p then
        p = {}
        for k, totals in ipairs(totals_of[at]) do p[k] = {slot(hflt, totals), slot(htext, totals)} end
        p.spent = {n.spent_hour, n.tenant_spent_hour, n.spent_day, n.tenant_spent_day}
        priced[at] = p
        expire[n.spent_hour], expire[n.tenant_spent_hour] = spent_hour_ttl, spent_hour_ttl
        expire[n.spent_day], expire[n.tenant_spent_day] = spent_day_ttl, spent_day_ttl
      end
      for k = 1, 6 do
        local sum, texts = p[k][1], p[k][2]
        texts.cost_usd = sum.cost_usd == nil and cost
        sum.cost_usd = (sum.cost_usd or 0) + amount
      end
      for _, spent in ipairs(p.spent) do
        itext[spent] = incr[spent] == nil and cost
        incr[spent] = (incr[spent] or 0) + amount
      end
    else
      s.unpriced = (s.unpriced or 0) + 1
    end
    if c.price_source then  -- where the worker took the price from: "MODEL_PRICES", "genai-prices x.y", "built-in"
      slot(hset, n.by_model).price_source = c.price_source
      slot(hset, n.tenant_by_model).price_source = c.price_source
    end
    append(push, n.latency, latency)
    append(push, n.tenant_latency, latency)
    append(push, n.received, c.received_entry)
    append(push, n.tenant_received, c.received_entry)
    append(hdel, n.reserved, c.job_id)
    append(hdel, n.reserved_tenant, c.job_id)
    append(zrem, n.reserved_until, c.job_id)
    -- the dashboard's minute (shared/timeseries.py): this job's own usage, without earlier attempts'
    local series = own.series(c)
    c.series = series  -- (kept for the names of its skipped keys, below)
    local s = slot(hinc, series)
    s['ended:' .. status] = (s['ended:' .. status] or 0) + 1
    s.prompt_tokens = (s.prompt_tokens or 0) + c.series_prompt
    s.completion_tokens = (s.completion_tokens or 0) + c.series_completion
    if c.series_cost then add_float(series, 'cost:' .. c.model, c.series_cost) end
    if c.ttft_field then s[c.ttft_field] = (s[c.ttft_field] or 0) + 1 end
    expire[series] = series_ttl
    if c.conversation_id then  -- the job's turn in its tenant's conversation
      local conversation = own.conversation(c)
      c.conversation = conversation
      append(rpush, conversation, c.user_turn)
      append(rpush, conversation, c.assistant_turn)
      append(zadd, n.conversations, c.now)
      append(zadd, n.conversations, c.conversation_id)
      expire[conversation], expire[n.conversations] = c.history_ttl, c.history_ttl
    end
  end
  end
end
for at, s in pairs(sums) do
  for _, totals in ipairs(totals_of[at]) do
    local t = slot(hinc, totals)
    for field, n in pairs(s) do t[field] = (t[field] or 0) + n end
  end
end
local broken = {}
local function call(cmd, key, ...)
  local reply = redis.pcall(cmd, key, ...)
  if type(reply) == 'table' and reply.err then broken[key] = true end
end
local function amount(sum, text) return text or string.format('%.17g', sum) end
local function many(cmd, t, step)  -- in chunks: Lua's unpack has a limit
  for key, values in pairs(t) do
    for from = 1, #values, 512 * step do
      call(cmd, key, unpack(values, from, math.min(#values, from + 512 * step - 1)))
    end
  end
end
-- '%d': a Lua number goes to Redis as '%.17g', which is '1e+18' from 1e17 on (HINCRBY refuses it)
for key, fields in pairs(hinc) do
  for field, n in pairs(fields) do call('HINCRBY', key, field, string.format('%d', n)) end
end
for key, fields in pairs(hflt) do
  for field, sum in pairs(fields) do call('HINCRBYFLOAT', key, field, amount(sum, htext[key][field])) end
end
for key, fields in pairs(hset) do for field, v in pairs(fields) do call('HSET', key, field, v) end end
many('SADD', sadd, 1)
many('LPUSH', push, 1)
for key, kept in pairs(trim) do call('LTRIM', key, 0, kept - 1) end
many('RPUSH', rpush, 2)
many('HDEL', hdel, 1)
many('ZREM', zrem, 1)
many('ZADD', zadd, 2)
for key, sum in pairs(incr) do call('INCRBYFLOAT', key, amount(sum, itext[key])) end
for key, ttl in pairs(expire) do call('EXPIRE', key, ttl) end  -- last: a key must exist to expire
if next(broken) then  -- name each skipped key in the reply of each job that wrote to it
  for _, i in ipairs(counted) do
    local c, n, named = jobs[i], names[i], {}
    local mine = {n.total, n.by_model, n.by_day, n.tenant_total, n.tenant_by_model, n.tenant_by_day, n.models,
                  n.tenant_models, n.tenants, n.latency, n.tenant_latency, n.received, n.tenant_received, n.reserved,
                  n.reserved_tenant, n.reserved_until, c.series}
    if c.cost then
      for _, key in ipairs({n.spent_hour, n.tenant_spent_hour, n.spent_day, n.tenant_spent_day}) do
        mine[#mine + 1] = key
      end
    end
    if c.conversation_id then mine[#mine + 1] = c.conversation; mine[#mine + 1] = n.conversations end
    for _, key in ipairs(mine) do
      if broken[key] and not named[key] then
        named[key] = true
        replies[i][#replies[i] + 1] = key
      end
    end
  end
end
return replies
"""


@script(HOLDER_LUA + NAMES_LUA + BATCH_LUA)
async def _record(
    redis, *, counted_ttl: Arg[int], owner_ttl: Arg[int], latencies_kept: Arg[int],
    received_kept: Arg[int], spent_hour_ttl: Arg[int], spent_day_ttl: Arg[int], series_ttl: Arg[int], counts: Args,
) -> list:  # fmt: skip
    """Count ended jobs, each once, for everyone, its tenant and the dashboard's minute; settle their
    budget holds into the spend; add their turns to their tenants' conversations; write an owner
    record again if it was lost. One reply per job (see BATCH_LUA)."""
    ...


async def job_tenant(redis, job_id: str, ctx: dict) -> str:
    """The tenant a job belongs to (its owner record, as the claim read it into arq's ctx, or read
    now). A job whose record is gone or damaged is UNOWNED: it must not read or extend anyone's
    conversation, the operator's included."""
    raw = ctx["owner"] if "owner" in ctx else await redis.get(keys.owner(job_id))
    name = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw or "")
    if TENANT_NAME.fullmatch(name):
        return name
    log.warning("job %s has no valid owner record (%s); it runs as nobody's", job_id, keys.owner(job_id))
    return UNOWNED


def reads_nothing(result: dict) -> bool:
    """Whether `prepare` reads nothing from Redis for this result (a first attempt: no dead ones)."""
    return int(result.get("attempt") or 1) <= 1


async def dead_attempts(redis, job_id: str, final_attempt: int, request: dict) -> dict | None:
    """What earlier attempts of this job streamed before their worker died, estimated like an answer
    cut short: one token per streamed piece, plus the prompt (about four characters a token) of each
    attempt that started answering. None when there was no earlier attempt with tokens. When the
    next attempt went on from the journal (`start.resumed`), the pieces up to the dead attempt's last
    journaled step are not counted here: their turns' usage came back with the journal."""
    if final_attempt <= 1:
        return None
    pieces: dict[int, int] = {}
    unjournaled: dict[int, int] = {}  # pieces since the attempt's last journaled step
    models: dict[int, str] = {}
    resumed: set[int] = set()  # attempts that went on from the journal
    for _, fields in await redis.xrange(keys.stream(job_id)):
        try:
            event = parse_event(fields.get(b"event", b""))
        except ValueError:
            continue  # junk in the stream is not a token anyone paid for
        if event.type == "start" and event.resumed is not None:
            resumed.add(event.attempt)
        if event.attempt >= final_attempt:
            continue
        if event.type == "start":
            models[event.attempt] = event.model
        elif event.type == "token":
            pieces[event.attempt] = pieces.get(event.attempt, 0) + 1
            unjournaled[event.attempt] = unjournaled.get(event.attempt, 0) + 1
        elif isinstance(event, ToolCallEvent | ToolResultEvent) and event.step is not None:
            unjournaled[event.attempt] = 0
    pieces = {a: unjournaled.get(a, 0) if a + 1 in resumed else n for a, n in pieces.items()}
    pieces = {a: n for a, n in pieces.items() if n}
    if not pieces:
        return None
    prompt_each = estimate_tokens("".join(str(request.get(k) or "") for k in ("message", "context")))
    prompt = prompt_each * len(pieces)
    completion = sum(pieces.values())
    costs = [prices.cost(models.get(a, "?"), prompt_each, n) for a, n in pieces.items()]
    return {
        "attempts": sorted(pieces),
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "cost_usd": None if any(c is None for c in costs) else sum(c for c in costs if c is not None),
        "estimated": True,
    }


def _turns(result: dict, request: dict, now: float) -> tuple[dict, dict]:
    usage = result["usage"]
    user = {
        "role": "user",
        "content": request.get("message", ""),
        "job_id": result["jobId"],
        "ts": round(now, 3),
    }
    assistant = {
        "role": "assistant",
        "content": result.get("aiResponse", ""),
        "job_id": result["jobId"],
        "model": result.get("model") or "?",
        "prompt_tokens": usage["promptTokens"],
        "completion_tokens": usage["completionTokens"],
        "cost_usd": usage.get("estimatedCost"),
        "ts": round(now, 3),
    }
    return user, assistant


async def record(
    redis, result: dict, request: dict, *, history_ttl: int, tenant: str = OPERATOR,
    first_token_s: float | None = None,
) -> bool:  # fmt: skip
    """Count a finished job (a JobResult dict) once, for everyone, for its tenant and in the
    dashboard's history (`first_token_s`: from its start to its first token); False if it was already
    counted. One round trip, which also writes a tenant's owner record again if Redis lost it."""
    count = await prepare(
        redis, result, request, history_ttl=history_ttl, tenant=tenant, first_token_s=first_token_s
    )
    return await write(redis, count)


async def write(redis, count: dict) -> bool:
    """Write the count `prepare` made (its own round trip); False if the job was counted before."""
    return _counted(count["job_id"], (await _record(redis, **_BATCH, counts=_encoded(count)))[0])


def command(counts: list[dict]) -> tuple:
    """The counts `prepare` made for the jobs ending together, as one command for the MULTI that
    stores their results (worker/endings.py), so they land together; its reply is one per job, in
    order, each for `recorded`."""
    return _record.command({**_BATCH, "counts": [part for count in counts for part in _encoded(count)]})  # type: ignore[attr-defined]


def _encoded(count: dict) -> tuple[str | bytes, str]:
    """A count as the script's two values: its JSON, without its received-messages entry (None: absent,
    nil in Lua), and that entry, JSON itself (cjson's decode of it escaped was ~15 % of a count's)."""
    entry = count["received_entry"]
    return _dumps({k: v for k, v in count.items() if v is not None and k != "received_entry"}), entry


def _text(value: dict) -> str:
    """`_dumps` as text: a value inside the count's JSON (a list item Redis stores as it is)."""
    encoded = _dumps(value)
    return encoded.decode() if isinstance(encoded, bytes) else encoded


def _dumps(value: dict) -> str | bytes:
    """JSON of a count's parts, by pydantic-core's encoder (json.dumps was 5 % of a worker's CPU per
    no-op job); text with a lone surrogate (a hostile prompt), which it refuses, by json.dumps."""
    try:
        return to_json(value)
    except ValueError:
        return json.dumps(value)


async def recorded(redis, count: dict, reply: object) -> bool:
    """Read this job's reply to `command` (a script cache Redis lost: counted now, the usual way)."""
    if isinstance(reply, NoScriptError):
        return await write(redis, count)
    return heard(count, reply)


def heard(count: dict, reply: object) -> bool:
    """`recorded` of a reply that needs no round trip (anything but a lost script cache)."""
    if isinstance(reply, BaseException):
        log.warning("could not count the usage of job %s: %s", count["job_id"], type(reply).__name__)
        return False
    return _counted(count["job_id"], reply)  # type: ignore[arg-type]


def _counted(job_id: str, counted: list) -> bool:
    if counted[1]:
        log.warning("job %s: its owner record was lost (Redis restarted without its data?); "
                    "written again for its result", job_id)  # fmt: skip
    if not counted[0]:
        return False
    for key in counted[2:]:
        damaged.warn(key.decode(errors="replace") if isinstance(key, bytes) else str(key),
                     f"job {job_id}'s usage was not added to it (wrong type, or a value that is not a number)")  # fmt: skip
    return True


async def prepare(
    redis, result: dict, request: dict, *, history_ttl: int, tenant: str = OPERATOR,
    first_token_s: float | None = None,
) -> dict:  # fmt: skip
    """What `record` writes, as the script's arguments (reads what dead attempts streamed, if any)."""
    job_id, model, usage = result["jobId"], result.get("model") or "?", result["usage"]
    dead = (
        None if reads_nothing(result) else await dead_attempts(redis, job_id, int(result["attempt"]), request)
    )
    prompt, completion = _tokens(usage["promptTokens"]), _tokens(usage["completionTokens"])
    cost = usage.get("estimatedCost")
    if dead:
        prompt, completion = prompt + dead["prompt_tokens"], completion + dead["completion_tokens"]
        cost = None if cost is None or dead["cost_usd"] is None else cost + dead["cost_usd"]
    now = time.time()
    minute = int(now // 60)
    day, hour = _day_hour(minute)
    latency_ms = int((result.get("processingTime") or 0) * 1000)
    received = {
        "job_id": job_id, "tenant": tenant, "worker_id": result.get("workerId"), "model": model,
        "status": result["status"], "error": result.get("error"), "prompt_tokens": prompt,
        "completion_tokens": completion, "cost_usd": cost, "latency_ms": latency_ms,
        "conversation_id": request.get("conversation_id"), "message": str(request.get("message", ""))[:200],
        "dead_attempts": dead, "ts": round(now, 3),
    }  # fmt: skip
    conversation_id = request.get("conversation_id") if result["status"] == "completed" else None
    user_turn, assistant_turn = _turns(result, request, now) if conversation_id else (None, None)
    dead_tokens = dead["prompt_tokens"] + dead["completion_tokens"] if dead else 0
    series_cost = usage.get("estimatedCost")
    return dict(  # the key names are BATCH_LUA's to make (`_NAMES`)
        job_id=job_id, tenant=tenant, model=model, day=day, hour=hour, minute=str(minute), status=result["status"],
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=_tokens(usage["totalTokens"]) + dead_tokens,
        cost=None if cost is None else repr(float(cost)), latency_ms=latency_ms, dead_attempt_tokens=dead_tokens,
        received_entry=_text(received), conversation_id=conversation_id or None,
        user_turn=user_turn and _text(user_turn), assistant_turn=assistant_turn and _text(assistant_turn),
        history_ttl=history_ttl, now=round(now, 3),
        price_source=prices.source(model) if cost is not None else None,
        keep_owner=tenant not in (OPERATOR, UNOWNED) or None,
        # the dashboard's minute (shared/timeseries.py): the job's own usage, without earlier attempts'
        series_prompt=max(0, usage["promptTokens"]), series_completion=max(0, usage["completionTokens"]),
        series_cost=None if series_cost is None else repr(float(series_cost)),
        ttft_field=timeseries.ttft_field(first_token_s),
    )  # fmt: skip


@functools.lru_cache(maxsize=4)
def _day_hour(minute: int) -> tuple[str, str]:
    """A minute's UTC day and hour, as the budget and usage keys name them."""
    at = time.gmtime(minute * 60)
    return time.strftime("%Y-%m-%d", at), time.strftime("%Y-%m-%dT%H", at)


MAX_TOKENS = 2**40  # a job's count as the batch script adds it up (Lua's doubles are exact to 2**53)


def _tokens(n: object) -> int:
    """A token count from a provider's usage (any number a server said), as the script can add it."""
    if type(n) is int and 0 <= n <= MAX_TOKENS:  # (the usual count, as it is: 3 a job)
        return n
    return min(max(int(n), 0), MAX_TOKENS) if isinstance(n, int | float) and n == n else 0
