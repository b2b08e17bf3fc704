"""The command-line tools beside `callgate serve` find its embedded Redis by themselves:
the unix socket and the password it keeps in the data directory."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import pytest

from gateway.cli.common import settings_with_redis
from gateway.redis.server import embedded_url
from tests.support.gwclient import OPERATOR_TOKEN


def test_the_embedded_redis_url_comes_from_the_data_directory(tmp_path: Path) -> None:
    assert embedded_url(tmp_path) is None  # no embedded Redis there
    redis_dir = tmp_path / "redis"
    redis_dir.mkdir()
    (redis_dir / "requirepass").write_text("s3cr/t\n")
    assert embedded_url(tmp_path) is None  # a password but no socket: not running
    (redis_dir / "redis.sock").touch()
    assert embedded_url(tmp_path) == f"unix://:{quote('s3cr/t', safe='')}@{redis_dir}/redis.sock"


def test_an_explicit_url_wins_and_no_redis_at_all_is_one_clear_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALLGATE_OPERATOR_TOKEN", OPERATOR_TOKEN)
    monkeypatch.setenv("CALLGATE_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("CALLGATE_REDIS_URL", raising=False)
    with pytest.raises(SystemExit, match="CALLGATE_REDIS_URL is required"):
        settings_with_redis()
    (tmp_path / "redis").mkdir()
    (tmp_path / "redis" / "requirepass").write_text("pw\n")
    (tmp_path / "redis" / "redis.sock").touch()
    assert settings_with_redis().redis_url == f"unix://:pw@{tmp_path}/redis/redis.sock"
    monkeypatch.setenv("CALLGATE_REDIS_URL", "redis://127.0.0.1:7/0")
    assert settings_with_redis().redis_url == "redis://127.0.0.1:7/0"
