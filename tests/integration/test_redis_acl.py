"""Least privilege: the README's `ACL SETUSER` line, applied as written, with Redis's default user
switched off, is all the messenger, the workers and the CLI need. 10 exact calls and one call of
every other tool that touches Redis run under it with 0 NOPERM (Redis's own count and ACL LOG); a
user without one of its permissions gets one line that names what is missing."""

from __future__ import annotations

import asyncio
import shlex
import sys

import pytest
from mcp import Client
from mcp_helpers import messenger_env, running_messengers
from processes import ROOT, WorkerProcesses, process_env
from redis_server import RedisServer

from worker.providers.mock import mock_reply

CALLS = 10
PASSWORD = "acl-test-password"
ADMIN = ("acl-admin", "acl-admin-password")


def readme_acl_line() -> str:
    """The one line of README.md that starts with `ACL SETUSER`, exactly as a reader would paste it."""
    lines = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("ACL SETUSER")]
    assert len(lines) == 1, lines
    return lines[0]


class AclRedis(RedisServer):
    """The test's own redis-server, its default user off: every client logs in as somebody."""

    def client(self):
        import redis as sync_redis

        return sync_redis.Redis(port=self.port, username=ADMIN[0], password=ADMIN[1])

    def url_for(self, user: str, password: str = PASSWORD) -> str:
        return f"redis://{user}:{password}@127.0.0.1:{self.port}/0"


@pytest.fixture(scope="module")
def acl_redis(tmp_path_factory):
    server = AclRedis(tmp_path_factory.mktemp("acl"))
    server.start()
    plain = super(AclRedis, server).client()
    plain.execute_command("ACL", "SETUSER", ADMIN[0], "on", f">{ADMIN[1]}", "~*", "&*", "+@all")
    line = readme_acl_line()
    words = shlex.split(line.replace("<password>", PASSWORD))
    assert plain.execute_command(*words) in (b"OK", "OK", True)
    user = words[2]
    plain.execute_command("ACL", "SETUSER", "default", "off")  # from here on, nobody is `default`
    yield server, user
    server.stop()


def user_script_errors(admin) -> dict:
    return {k: v for k, v in admin.info("errorstats").items() if "NOPERM" in k}


async def every_tool(url: str) -> list[tuple[str, dict]]:
    """10 exact calls, then each other tool that reads or writes Redis once."""
    async with Client(url) as client:
        prompts = [f"acl call {i}" for i in range(CALLS)]
        results = await asyncio.gather(
            *(
                client.call_tool("send_message_to_ai", {"message": p, "conversation_id": "acl"})
                for p in prompts
            )
        )
        answers = [(p, r.structured_content or {}) for p, r in zip(prompts, results, strict=True)]
        job_id = answers[0][1]["jobId"]
        queued = (await client.call_tool("submit_message", {"message": "acl submitted"})).structured_content
        assert queued is not None
        calls = [
            ("wait_for_job", {"job_id": queued["jobId"]}),
            ("get_job", {"job_id": job_id}),
            ("cancel_job", {"job_id": job_id}),
            ("check_health", {}),
            ("get_ai_usage_stats", {}),
            ("get_conversation_history", {}),
            ("get_conversation_history", {"conversation_id": "acl"}),
            ("get_received_messages", {}),
            ("configure_ai_model", {"temperature": 0.5}),
            ("list_dead_jobs", {}),
            ("list_models", {}),
        ]
        for name, arguments in calls:
            result = await client.call_tool(name, arguments)
            assert not result.is_error, (name, result.content)
    return answers


async def run_cli(url: str, *args: str) -> tuple[int | None, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "messenger.cli", *args, env=process_env(url), cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode(), err.decode()


async def test_the_readme_acl_line_runs_messenger_workers_and_cli_with_0_noperm(acl_redis, tmp_path):
    server, user = acl_redis
    url = server.url_for(user)
    admin = server.client()
    workers = WorkerProcesses(server, tmp_path)
    try:
        with running_messengers(tmp_path) as messengers:
            messenger = messengers.http(messenger_env(url), wait=False)
            workers.start(url)
            messenger.wait_ready()
            async with asyncio.timeout(90):
                answers = await every_tool(messenger.url)
            cli = await asyncio.gather(
                *(run_cli(url, command) for command in ("health", "jobs", "stats", "dead"))
            )
    finally:
        workers.stop_all()
    for prompt, result in answers:
        assert result.get("status") == "completed", result
        assert result["aiResponse"] == "".join(mock_reply([{"role": "user", "content": prompt}]))
    for code, out, err in cli:
        assert code == 0, (out, err)
    assert user_script_errors(admin) == {}
    assert admin.execute_command("ACL", "LOG") == []
    assert "NOPERM" not in workers.logs() + messenger.log()


LESSER = {
    "-evalsha": "'evalsha' command",
    "-subscribe": "'subscribe' command",  # refused inside the hub's retry loop, but probed at start
    "resetchannels": "channels",
    "resetkeys": "keys",
}


async def test_a_user_without_one_permission_gets_one_line_naming_it_exit_1(acl_redis):
    server, _ = acl_redis
    admin = server.client()
    words = shlex.split(readme_acl_line().replace("<password>", PASSWORD))
    for n, take_away in enumerate(LESSER):
        admin.execute_command(*words[:2], f"lesser-{n}", *words[3:], take_away)
    done = await asyncio.gather(
        *(run_cli(server.url_for(f"lesser-{n}"), "ask", "hi") for n in range(len(LESSER)))
    )
    for (code, out, err), names in zip(done, LESSER.values(), strict=True):
        lines = err.strip().splitlines()
        assert code == 1 and len(lines) == 1, (out, err)
        assert "NOPERM" in lines[0] and names in lines[0] and "ACL SETUSER" in lines[0], lines[0]
