import pytest
from openai_server import openai_server  # noqa: F401  (the fixture, shared with the other suites)
from redis_server import RedisServer


@pytest.fixture
def make_redis(tmp_path, workers):
    """A redis-server of the test's own, with or without persistence (`make_redis(persistent)`); the
    workers fixture watches it for heartbeats. Stopped, with the workers, after the test."""
    servers = []

    def make(persistent: bool) -> RedisServer:
        server = RedisServer(tmp_path / "redis", persistent=persistent)
        server.tmp.mkdir()
        server.start()
        workers.redis_server = server
        servers.append(server)
        return server

    yield make
    workers.stop_all()
    for server in servers:
        server.stop()
