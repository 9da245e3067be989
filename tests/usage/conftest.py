import pytest
from openai_server import openai_server  # noqa: F401  (the fixture, shared with the other suites)

from shared import prices


@pytest.fixture(autouse=True)
def restore_prices():
    """open_runtime and prices.configure change the process-wide price table; leave it as it was."""
    yield
    prices.configure(None)
