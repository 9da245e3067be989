"""The earlier turns of a conversation, as messages for the model, within the configured caps.

Conversations are kept per tenant: a job reads only its own tenant's conversation of that id, so
another tenant's conversation id names an empty conversation, never theirs."""

from __future__ import annotations

import json

from shared import damaged, keys
from shared.tokens import estimate_tokens


async def earlier_turns(
    redis, tenant: str, conversation_id: str, *, max_turns: int, max_tokens: int
) -> list[dict[str, str]]:
    """The newest turns that fit both caps (about four characters a token), oldest first."""
    if max_turns <= 0 or max_tokens <= 0:
        return []
    key = keys.conversation(tenant, conversation_id)
    raw = await damaged.read(redis.lrange(key, -max_turns, -1), key, [])  # damaged: answer without history
    messages: list[dict[str, str]] = []
    budget = max_tokens
    for item in reversed(raw):
        try:
            turn = json.loads(item)
            role, content = turn["role"], str(turn["content"])
        except (ValueError, KeyError, TypeError):
            continue  # a hand-edited or damaged turn is skipped, not fatal
        if role not in ("user", "assistant"):
            continue
        cost = estimate_tokens(content) + 4  # and a few for the turn's framing
        if cost > budget:
            break
        budget -= cost
        messages.append({"role": role, "content": content})
    messages.reverse()
    if messages and messages[0]["role"] == "assistant":
        messages.pop(0)  # start on a user turn
    return messages
