import stat
from pathlib import Path

import pytest

from slime_rl.buffer.server import RedisAddress, resolve_redis_binary, server_argv
from slime_rl.config import BufferConfig
from slime_rl.errors import ConfigError


def test_resolve_redis_binary_missing_configured_path_raises_config_error(tmp_path):
    with pytest.raises(ConfigError, match="buffer.redis_binary"):
        resolve_redis_binary(str(tmp_path / "nope"))


def test_resolve_redis_binary_prefers_configured_path(tmp_path):
    binary = tmp_path / "my-redis"
    binary.write_text("")
    assert resolve_redis_binary(str(binary)) == binary


def test_resolve_redis_binary_prefers_redis_server_on_path(tmp_path, monkeypatch):
    fake = tmp_path / "redis-server"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert resolve_redis_binary(None) == fake


def test_resolve_redis_binary_falls_back_to_bundled_valkey(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no redis-server here
    path = resolve_redis_binary(None)
    assert path.name == "valkey-server" and path.is_file()


def test_buffer_config_defaults_are_loopback_and_embedded():
    cfg = BufferConfig()
    assert cfg.host == "127.0.0.1" and cfg.url is None


def test_server_argv_binds_given_host_and_requires_password():
    argv = server_argv(Path("/bin/redis"), RedisAddress("127.0.0.1", 1234, "s3cret"), Path("/d"), appendonly=True)
    assert argv[argv.index("--bind") + 1] == "127.0.0.1"
    assert argv[argv.index("--requirepass") + 1] == "s3cret"
    assert argv[argv.index("--appendonly") + 1] == "yes"
    assert argv[argv.index("--protected-mode") + 1] == "yes"
    assert argv[argv.index("--appendfsync") + 1] == "always"  # kill -9 loses no acknowledged write


def test_server_argv_without_aof_sets_no_fsync_policy():
    argv = server_argv(Path("/bin/redis"), RedisAddress("127.0.0.1", 1234, None), Path("/d"), appendonly=False)
    assert "--appendfsync" not in argv


@pytest.mark.parametrize("lease_s", [0.0, -1.0])
def test_buffer_config_rejects_non_positive_lease(lease_s):
    with pytest.raises(ConfigError, match="buffer.lease_s"):
        BufferConfig(lease_s=lease_s)


def test_redis_address_url_carries_password():
    assert RedisAddress("127.0.0.1", 5, "pw").url == "redis://:pw@127.0.0.1:5/0"
