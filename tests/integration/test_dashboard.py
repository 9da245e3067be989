"""The dashboard in a real headless Chromium: a messenger and a worker as subprocesses on a real Redis,
keys configured. The page submits jobs through its form, shows a job's tokens as they stream in,
opens a job whole, cancels one and retries it, filters the list and draws the charts; a tenant's
key is refused; and `messenger serve` stops at once on SIGTERM with the dashboard tab open.

Chromium is driven through ChromeDriver's W3C WebDriver HTTP API with urllib (no client library).
Debian's `chromium` and `chromium-driver` are installed by the test when missing (as root, ~20 s).
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from mcp_helpers import ROOT, free_port, messenger_env, running_messengers
from runtimes import runtime_for

from shared import keys, timeseries
from shared.models import ChatRequest
from worker.providers.mock import mock_reply

pytestmark = [pytest.mark.redis, pytest.mark.timeout(300)]

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# headless on a machine with no screen and a closed network (see the machine notes)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,1000"]  # fmt: skip
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C key of an element reference
SCREENSHOTS = ROOT / "docs"  # dashboard-*.png, refreshed only with MCPQ_UPDATE_SCREENSHOT=1
OPS, ALICE = "ops-key-for-the-dashboard-test", "alice-key-for-the-dashboard-test"


def ensure_chromium() -> None:
    """Install Debian's chromium and chromium-driver if they are missing (needs root)."""
    if Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists():
        return
    if os.geteuid() != 0:
        pytest.fail(
            "chromium and chromium-driver are missing; run: apt-get install -y chromium chromium-driver"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "chromium", "chromium-driver"]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, check=True, capture_output=True)
        subprocess.run(install, env=env, check=True, capture_output=True)


class Browser:
    """A ChromeDriver session: just the WebDriver commands this test needs."""

    def __init__(self, log_path: Path):
        self.port = free_port()
        self.profile = tempfile.mkdtemp(prefix="chromium-")
        self.log = open(log_path, "wb")
        self.driver = subprocess.Popen(
            [CHROMEDRIVER, f"--port={self.port}"], stdout=self.log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                if self._call("GET", "/status")["ready"]:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("chromedriver did not start")
            time.sleep(0.1)
        options = {"binary": CHROMIUM, "args": [*CHROMIUM_ARGS, f"--user-data-dir={self.profile}"]}
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": options}}}
        self.session = "/session/" + self._call("POST", "/session", caps)["sessionId"]

    def _call(self, method: str, path: str, body: dict | None = None):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
            headers={"content-type": "application/json"},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.loads(response.read())["value"]
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"WebDriver {method} {path}: {e.read()[:500]!r}") from None

    def command(self, method: str, path: str, body: dict | None = None):
        return self._call(method, self.session + path, body)

    def open(self, url: str) -> None:
        self.command("POST", "/url", {"url": url})

    def js(self, script: str, *args):
        return self.command("POST", "/execute/sync", {"script": script, "args": list(args)})

    def element(self, css: str) -> str:
        return self.command("POST", "/element", {"using": "css selector", "value": css})[ELEMENT]

    def type(self, css: str, text: str) -> None:
        self.command("POST", f"/element/{self.element(css)}/value", {"text": text})

    def click(self, css: str) -> None:
        self.command("POST", f"/element/{self.element(css)}/click", {})

    def screenshot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(self.command("GET", "/screenshot")))

    def text(self, css: str) -> str:
        return self.js(
            "const el = document.querySelector(arguments[0]); return el ? el.textContent : '';", css
        )

    def close(self) -> None:
        try:
            self.command("DELETE", "")
        finally:
            self.driver.terminate()
            self.driver.wait(10)
            self.log.close()
            shutil.rmtree(self.profile, ignore_errors=True)


def wait_for(what: str, check, timeout: float = 30, every: float = 0.03):
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)
    return value


def flight_text(browser: Browser, job_id: str) -> str | None:
    """The text the page shows for a job in flight (None once it has left "in flight")."""
    return browser.js(
        "const el = document.querySelector(`#flight [data-job='${arguments[0]}'] .text`);"
        "return el ? el.textContent : null;",
        job_id,
    )


def submitted_id(browser: Browser) -> str | None:
    return browser.js("const el = document.getElementById('submitted-id'); return el && el.textContent;")


def submit(browser: Browser, prompt: str) -> str:
    """Type a message into the page's form, press Submit, and return the job id the page shows."""
    before = submitted_id(browser)
    browser.type("#submit input[name=message]", prompt)
    browser.click("#submit button")
    return wait_for("the form to return a job id", lambda: (i := submitted_id(browser)) != before and i)


def listed(browser: Browser) -> list[list[str]]:
    """The job list as the page shows it: one list of cell texts per row."""
    return browser.js(
        "return [...document.querySelectorAll('#jobs tr')].slice(1).map((r) => [...r.cells].map((c) => c.textContent));"
    )


def detail_shows(browser: Browser, job_id: str, status: str) -> bool:
    return browser.text("#detail-id") == job_id and browser.text("#detail-status") == status


def shoot(browser: Browser, tmp_path: Path, name: str) -> Path:
    folder = SCREENSHOTS if os.environ.get("MCPQ_UPDATE_SCREENSHOT") else tmp_path
    path = folder / f"dashboard-{name}.png"
    browser.screenshot(path)
    assert path.stat().st_size > 10_000
    return path


@pytest.fixture
def browser(tmp_path):
    ensure_chromium()
    b = Browser(tmp_path / "chromedriver.log")
    yield b
    b.close()


async def seed_history(redis_url: str) -> None:
    """An hour of earlier traffic for the charts' screenshot, written through the workers' own
    recorder (shared/timeseries.py): the minutes before this test's jobs are synthetic."""
    now = time.time()
    async with runtime_for(redis_url) as runtime:
        for ago in range(2, 60):
            wave = 1 + math.sin(ago / 6) ** 2
            at = now - ago * 60
            for i in range(int(6 * wave)):
                model, cost = ("gpt-4o-mini", 0.0004) if i % 3 else ("claude-sonnet-4", 0.006)
                await timeseries.record_job(
                    runtime.redis, status="failed" if i == 2 and ago % 9 == 0 else "completed", model=model,
                    prompt_tokens=300, completion_tokens=int(1200 * wave), cost=cost * wave,
                    first_token_s=0.2 + 0.05 * (i % 7) * wave + (1.5 if i == 3 else 0), now=at,
                )  # fmt: skip
            await runtime.redis.execute_command(
                "HSET", keys.series(int(at // 60)), "depth_max", int(12 * wave**2) - 10
            )


async def submit_as(redis_url: str, tenant: str, message: str) -> str:
    async with runtime_for(redis_url) as runtime:
        return await runtime.queue.submit(ChatRequest(message=message), caller=tenant)


def test_an_operator_follows_opens_cancels_and_retries_jobs_and_serve_stops_with_the_tab_open(
    redis_url, redis_server, workers, browser, tmp_path
):
    (worker,) = workers.start(redis_url, MOCK_TOKEN_DELAY_MS="60")
    worker_id = next(redis_server.client().scan_iter("mcpq:worker:*")).decode().removeprefix("mcpq:worker:")
    env = messenger_env(redis_url, MCP_API_KEYS=json.dumps({"alice": ALICE}), MCP_ADMIN_KEY=OPS)
    with running_messengers(tmp_path) as messengers:
        server = messengers.http(env)
        browser.open(f"{server.base_url}/dashboard?token={OPS}")
        wait_for("the event stream", lambda: browser.text("#conn") == "live")
        wait_for("the worker to be listed", lambda: worker_id in browser.text("#workers"))

        short = "Say hello to the dashboard."
        alices = asyncio.run(submit_as(redis_url, "alice", short))  # a tenant's job, in the same list
        first = submit(browser, short)
        answer = "".join(mock_reply([{"role": "user", "content": short}]))

        # a long answer (~55 tokens, 60 ms apart): it streams in under "in flight", token by token
        prompt = " ".join(f"word{i}" for i in range(35))
        long_id = submit(browser, prompt)
        long_answer = "".join(mock_reply([{"role": "user", "content": prompt}]))
        seen: list[str] = []
        while len(seen) < 4:
            text = flight_text(browser, long_id)
            assert text is None or long_answer.startswith(text), (
                f"the page shows text that is not the answer: {text!r}"
            )
            if text and (not seen or seen[-1] != text):
                seen.append(text)
            assert server.proc.poll() is None and worker.poll() is None
            time.sleep(0.03)

        # open it from the in-flight list, cancel it from its page: it leaves "in flight"
        browser.click(f"#flight a[data-id='{long_id}']")
        wait_for("the running job's detail", lambda: detail_shows(browser, long_id, "running"))
        browser.click("#cancel")
        wait_for("the job to be cancelled", lambda: detail_shows(browser, long_id, "cancelled"), timeout=20)
        assert long_answer.startswith(browser.text("#answer")) and browser.text("#answer") != long_answer
        wait_for("it to leave in flight", lambda: flight_text(browser, long_id) is None)

        # retry it: the page opens the new job, which answers in full
        browser.click("#retry")
        retried = wait_for("the retry's page", lambda: (i := browser.text("#detail-id")) != long_id and i)
        wait_for("the retry to answer", lambda: detail_shows(browser, retried, "completed"), timeout=30)
        assert browser.text("#answer") == long_answer and long_id in browser.text("#detail")

        # the first job whole: its text, events and attempt, as the screenshot shows
        browser.js("location.hash = 'job=' + arguments[0];", first)
        wait_for("the first job's page", lambda: detail_shows(browser, first, "completed"))
        assert browser.text("#answer") == answer
        assert worker_id in browser.text("#attempts") and "done" in browser.text("#events")
        assert "tokens" in browser.text("#events") and short in browser.text("#detail")
        shoot(browser, tmp_path, "job")
        browser.click("#close")

        # the list: full ids, tenant, status; filter by status, search by an id's prefix
        def all_ended() -> list[list[str]] | None:
            rows = listed(browser)
            return rows if len(rows) == 4 and not any(r[4] in ("queued", "running") for r in rows) else None

        rows = wait_for("four jobs listed, none in flight", all_ended)
        assert {(r[1], r[2], r[4]) for r in rows} == {
            (alices, "alice", "completed"), (first, "operator", "completed"),
            (long_id, "operator", "cancelled"), (retried, "operator", "completed"),
        }  # fmt: skip
        browser.js("document.querySelector('#jobs-section').scrollIntoView();")
        shoot(browser, tmp_path, "list")
        browser.js("const s = document.querySelector('#filters [name=status]'); s.value = 'cancelled';"
                   "s.dispatchEvent(new Event('input', {bubbles: true}));")  # fmt: skip
        wait_for("only the cancelled job", lambda: [r[1] for r in listed(browser)] == [long_id])
        browser.js("const s = document.querySelector('#filters [name=status]'); s.value = '';")
        browser.type("#filters input[name=q]", retried[:10])
        wait_for("only the retried job", lambda: [r[1] for r in listed(browser)] == [retried])

        # the charts: the jobs that ended, their tokens and first-token times, from the workers' history
        asyncio.run(seed_history(redis_url))
        browser.js("const q = document.querySelector('#filters [name=q]'); q.value = '';"
                   "q.dispatchEvent(new Event('input', {bubbles: true}));")  # fmt: skip
        wait_for("the whole list again", lambda: len(listed(browser)) == 4)
        browser.js("document.querySelector('#window').dispatchEvent(new Event('change'));")
        wait_for("the charts", lambda: browser.js(
            "return ['jobs', 'ttft', 'tokens'].every((c) => document.querySelector(`#c-${c} path[d^=M]`) "
            "|| document.querySelector(`#c-${c} circle`));"))  # fmt: skip
        assert "p95" in browser.text("#l-ttft") and "mock-1" in browser.text("#l-cost")
        browser.js("window.scrollTo(0, 0);")
        shoot(browser, tmp_path, "charts")
        assert server.proc.poll() is None and worker.poll() is None

        # the key: from the query on the page and its stream only; a tenant's key is refused
        assert server.get("/dashboard")[0] == 401 and server.get("/dashboard?token=wrong")[0] == 401
        assert server.get(f"/mcp?token={OPS}")[0] == 401  # the query token is for the dashboard only
        assert server.get(f"/dashboard/jobs?token={OPS}")[0] == 401  # and only for the page and its stream
        assert server.get(f"/dashboard?token={ALICE}")[0] == 403  # every tenant's jobs are not alice's
        assert server.get(f"/dashboard/jobs/{alices}", {"Authorization": f"Bearer {ALICE}"})[0] == 403

        # SIGTERM with this tab open: its stream ends at once and serve stops cleanly (it used to hang)
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled
        assert "graceful shutdown exceeded" not in server.log() and "without completing" not in server.log()
        wait_for("the page to notice", lambda: browser.text("#conn") == "reconnecting…")
