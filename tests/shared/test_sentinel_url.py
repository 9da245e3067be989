"""REDIS_URL=redis+sentinel://…: the forms the README gives are read as meant, and every malformed one
stops start-up with one line naming REDIS_URL and the wrong part, never the password."""

from __future__ import annotations

import pytest

from shared.errors import SettingsError
from shared.sentinel import SentinelUrl, parse_sentinel_url
from shared.settings import load_settings


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "redis+sentinel://s1:26379,s2:26380,s3:26381/mymaster",
            SentinelUrl((("s1", 26379), ("s2", 26380), ("s3", 26381)), "mymaster", 0, None, None),
        ),
        (
            "redis+sentinel://:pa%40ss@10.0.0.1:5000/prod-queue/3",
            SentinelUrl((("10.0.0.1", 5000),), "prod-queue", 3, None, "pa@ss"),
        ),
        (
            "redis+sentinel://mcpq:p:w/d@sentinel.internal/main.1",
            SentinelUrl((("sentinel.internal", 26379),), "main.1", 0, "mcpq", "p:w/d"),
        ),
        (
            "redis+sentinel://[::1]:26379,[fe80::2]/m/0",
            SentinelUrl((("::1", 26379), ("fe80::2", 26379)), "m", 0, None, None),
        ),
    ],
)
def test_good_sentinel_urls_are_read_as_meant(clean_env, url, expected):
    assert parse_sentinel_url(url) == expected
    clean_env.setenv("REDIS_URL", url)
    assert load_settings().redis_url == url


@pytest.mark.parametrize(
    ("url", "names"),
    [
        ("redis+sentinel://s1:26379", "no master"),
        ("redis+sentinel://s1:26379/", "no master"),
        ("redis+sentinel://s1:26379/my master", "master name"),
        ("redis+sentinel://s1:26379/mymaster/zero", "database"),
        ("redis+sentinel://s1:26379/mymaster/-1", "database"),
        ("redis+sentinel://s1:70000/mymaster", "port"),
        ("redis+sentinel://s1:0/mymaster", "port"),
        ("redis+sentinel://s1:abc/mymaster", "port"),
        ("redis+sentinel://s1:26379,,s2/mymaster", "host:port"),
        ("redis+sentinel:///mymaster", "host:port"),
        ("redis+sentinel://s1:26379/mymaster?ssl=true", "?options"),
        ("redis+sentinel://s3cr3t-pw@s1:26379/mymaster", "user:password"),
        ("sentinel://s1:26379/mymaster", "redis+sentinel://"),
    ],
)
def test_malformed_sentinel_url_is_one_line_naming_redis_url(clean_env, url, names):
    clean_env.setenv("REDIS_URL", url)
    with pytest.raises(SettingsError) as info:
        load_settings()
    message = str(info.value)
    assert message.startswith("REDIS_URL: ") and "\n" not in message, message
    assert names in message, message
    assert "s3cr3t" not in message
