"""boto3 is the `mcp-queue[bedrock]` extra: without it, Bedrock is refused in one line that says what
to install — at a worker's start when its settings need Bedrock, and per request for `bedrock/…`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from stream_helpers import collect, failure, model_call

from shared.settings import load_settings
from worker.providers import ProviderError, make_provider, make_providers

HINT = "AWS Bedrock needs boto3, which is not installed: pip install 'mcp-queue[bedrock]'"


@pytest.fixture
def without_boto3(monkeypatch):
    """This process as if boto3 and botocore were not installed (None in sys.modules fails the import)."""
    for name in [m for m in sys.modules if m.partition(".")[0] in ("boto3", "botocore")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "boto3", None)
    monkeypatch.setitem(sys.modules, "botocore", None)
    monkeypatch.delitem(sys.modules, "worker.providers.bedrock", raising=False)


def test_a_bedrock_provider_without_boto3_is_refused_with_the_install_line(clean_env, without_boto3):
    with pytest.raises(ProviderError, match=r"^AWS Bedrock needs boto3") as raised:
        make_provider(load_settings(ai_provider="bedrock"))
    assert not raised.value.retryable  # another try on another worker would fail the same way


async def test_a_request_for_a_bedrock_model_fails_in_one_line_and_the_others_still_run(
    clean_env, without_boto3
):
    providers = make_providers(load_settings())  # AI_PROVIDER=mock: starts without boto3
    error = await failure(providers, model_call("bedrock/anthropic.claude-3-5-haiku"))
    assert str(error).startswith(HINT) and "\n" not in str(error)
    pieces, end = await collect(providers, model_call("mock-1"))
    assert pieces and end.model == "mock-1"


def test_a_bedrock_worker_without_boto3_stops_at_start_with_the_install_line(redis_url, tmp_path: Path):
    from processes import ROOT, process_env

    shadow = tmp_path / "botocore"  # a botocore that is "not installed", ahead of the real one
    shadow.mkdir()
    (shadow / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'botocore'\", name='botocore')\n"
    )
    env = process_env(redis_url, AI_PROVIDER="bedrock", AWS_REGION="us-east-1", PYTHONPATH=str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-m", "worker.cli"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(f"worker: {HINT}")
