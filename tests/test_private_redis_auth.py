"""At start-up, serve warns once when the Redis it is given (CALLGATE_REDIS_URL) takes
clients without a password or ACL user (issue 12 §1): anyone who reaches such a Redis can
rewrite any balance. The check is a PING without AUTH on a fresh connection; the warning
names the server, never the URL, which may carry the password."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from gateway.cli.main import _warn_if_open_redis, redis_accepts_anonymous
from gateway.redis.server import RedisServer, free_port


@pytest.fixture
def password_server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "pw", password=secrets.token_hex(16), name="pw-redis") as s:
        yield s


@pytest.fixture
def acl_server(tmp_path: Path) -> Iterator[tuple[RedisServer, str]]:
    """An ACL user 'gateway' with a password, and the default user switched off."""
    password = secrets.token_hex(16)
    with RedisServer(tmp_path / "acl", name="acl-redis") as server:
        with redis.Redis.from_url(server.url) as admin:
            admin.acl_setuser("gateway", enabled=True, passwords=[f"+{password}"],
                              keys=["*"], channels=["*"], commands=["+@all"])
            admin.acl_setuser("default", enabled=False)
        yield server, f"redis://gateway:{password}@127.0.0.1:{server.port}/0"


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "callgate"]


def test_an_open_redis_is_warned_about_once(own_redis: RedisServer,
                                            caplog: pytest.LogCaptureFixture) -> None:
    assert redis_accepts_anonymous(own_redis.url) is True
    with caplog.at_level(logging.WARNING, logger="callgate"):
        _warn_if_open_redis(own_redis.url)
    assert messages(caplog) == [
        f"Redis at 127.0.0.1:{own_redis.port} accepts connections without a password or ACL "
        "user: set one (requirepass, or an ACL user) and give it in CALLGATE_REDIS_URL"]


def test_credentials_in_the_url_do_not_hide_an_open_redis(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A password in the URL proves nothing: what counts is whether Redis takes a client
    that sends none."""
    url = f"redis://:{secrets.token_hex(8)}@127.0.0.1:{own_redis.port}/0"
    assert redis_accepts_anonymous(url) is True
    with caplog.at_level(logging.WARNING, logger="callgate"):
        _warn_if_open_redis(url)
    assert len(messages(caplog)) == 1
    assert url not in caplog.text and url.split("@")[0] not in caplog.text


def test_a_redis_with_a_password_is_not_warned_about(
    password_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    assert redis_accepts_anonymous(password_server.url) is False
    with caplog.at_level(logging.WARNING, logger="callgate"):
        _warn_if_open_redis(password_server.url)
    assert messages(caplog) == []


def test_a_redis_with_an_acl_user_is_not_warned_about(
    acl_server: tuple[RedisServer, str], caplog: pytest.LogCaptureFixture
) -> None:
    _, url = acl_server
    assert redis_accepts_anonymous(url) is False
    with caplog.at_level(logging.WARNING, logger="callgate"):
        _warn_if_open_redis(url)
    assert messages(caplog) == []


def test_an_unreachable_redis_is_not_judged(caplog: pytest.LogCaptureFixture) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nobody listens there
    assert redis_accepts_anonymous(url, timeout_s=0.5) is None
    with caplog.at_level(logging.WARNING, logger="callgate"):
        _warn_if_open_redis(url)
    assert messages(caplog) == []


def test_a_unix_socket_redis_is_checked_too(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "u", unix_only=True, name="open-unix") as open_unix:
        assert redis_accepts_anonymous(open_unix.url) is True
    with RedisServer(tmp_path / "v", unix_only=True, password="x" * 32, name="pw-unix") as pw:
        assert redis_accepts_anonymous(pw.url) is False
