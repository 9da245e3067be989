"""The dashboard in a real headless Chromium: a messenger and a worker as subprocesses on a real Redis;
the page submits a job through its form and shows the job's tokens as they stream in.

Chromium is driven through ChromeDriver's W3C WebDriver HTTP API with urllib (no client library).
Debian's `chromium` and `chromium-driver` are installed by the test when missing (as root, ~20 s).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from mcp_helpers import ROOT, free_port, messenger_env, running_messengers

from worker.providers.mock import mock_reply

pytestmark = [pytest.mark.redis, pytest.mark.timeout(300)]

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# headless on a machine with no screen and a closed network (see the machine notes)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,1000"]  # fmt: skip
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C key of an element reference
README_SCREENSHOT = ROOT / "docs" / "dashboard.png"  # refreshed only with MCPQ_UPDATE_SCREENSHOT=1


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


def job_text(browser: Browser, job_id: str) -> str | None:
    """The text the page shows for a job, in flight or among the recent results."""
    return browser.js(
        "const el = document.querySelector(`[data-job='${arguments[0]}'] .text`);"
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


@pytest.fixture
def browser(tmp_path):
    ensure_chromium()
    b = Browser(tmp_path / "chromedriver.log")
    yield b
    b.close()


def test_dashboard_streams_a_submitted_jobs_tokens_in_a_real_browser(
    redis_url, redis_server, workers, browser, tmp_path
):
    (worker,) = workers.start(redis_url, MOCK_TOKEN_DELAY_MS="40")
    screenshot = README_SCREENSHOT if os.environ.get("MCPQ_UPDATE_SCREENSHOT") else tmp_path / "dashboard.png"
    worker_id = next(redis_server.client().scan_iter("mcpq:worker:*")).decode().removeprefix("mcpq:worker:")
    with running_messengers(tmp_path) as messengers:
        server = messengers.http(messenger_env(redis_url))
        browser.open(server.base_url + "/dashboard")
        wait_for(
            "the event stream",
            lambda: browser.js("return document.getElementById('conn').textContent;") == "live",
        )
        wait_for(
            "the worker to be listed",
            lambda: worker_id in browser.js("return document.getElementById('workers').textContent;"),
        )

        first = "Say hello to the dashboard."
        first_id = submit(browser, first)
        answer = "".join(mock_reply([{"role": "user", "content": first}]))
        wait_for("the first answer", lambda: job_text(browser, first_id) == answer)

        # a longer answer (~50 tokens, 40 ms apart): watch it grow token by token
        prompt = " ".join(f"word{i}" for i in range(35))
        job_id = submit(browser, prompt)
        answer = "".join(mock_reply([{"role": "user", "content": prompt}]))
        seen: list[str] = []
        shot = False
        while (text := job_text(browser, job_id)) != answer:
            assert text is None or answer.startswith(text), (
                f"the page shows text that is not the answer: {text!r}"
            )
            if text and (not seen or seen[-1] != text):
                seen.append(text)
            if not shot and text and len(text) > len(answer) // 3:
                browser.screenshot(screenshot)  # mid-stream: a job in flight next to a finished one
                shot = True
            assert server.proc.poll() is None and worker.poll() is None
            time.sleep(0.03)
        partial = [t for t in seen if 0 < len(t) < len(answer)]
        assert len(partial) >= 3, f"tokens did not stream in, the page only showed: {seen!r}"
        if not shot:
            browser.screenshot(screenshot)

        page = browser.js("return document.body.innerText;")
        assert worker_id in page
        assert "mock-1" in page  # the cost-per-model table
        assert screenshot.stat().st_size > 10_000


def test_dashboard_needs_the_operator_key_and_takes_it_from_the_query(redis_url, tmp_path):
    with running_messengers(tmp_path) as messengers:
        server = messengers.http(messenger_env(redis_url, MCP_API_KEY="tok1", MCP_ADMIN_KEY="ops-key"))
        assert server.get("/dashboard")[0] == 401
        assert server.get("/dashboard?token=wrong")[0] == 401
        assert server.get("/mcp?token=ops-key")[0] == 401  # the query token is for the dashboard only
        assert server.get("/dashboard?token=tok1")[0] == 403  # a tenant key: every tenant's jobs are not its
        status, body = server.get("/dashboard?token=ops-key")
        assert status == 200 and b"<title>mcp-queue dashboard</title>" in body
        assert server.get("/dashboard", {"Authorization": "Bearer ops-key"})[0] == 200
        request = urllib.request.Request(
            server.base_url + "/dashboard/events?token=ops-key", headers={"accept": "text/event-stream"}
        )
        with urllib.request.urlopen(request, timeout=10) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            lines = iter(stream.readline, b"")
            event = next(line for line in lines if line.startswith(b"event: snapshot"))
            data = json.loads(next(lines).removeprefix(b"data: "))
        assert event and data["queue_depth"] == 0 and data["in_flight"] == []
