"""Life cycle of the real `sglang-router` (PyPI, Rust) in front of the engines, and its worker API.

Owns the router process and the calls that add, list and remove workers (`/workers`, sglang-router
0.3.2). Routing itself (round robin, cache aware, ...) is the router's job; engines are added after
they are healthy and removed before they stop.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

import httpx

from slime_rl.errors import ServiceError
from slime_rl.processes import free_port, log_tail, spawn, stop

logger = logging.getLogger(__name__)

POLICIES = ("round_robin", "cache_aware", "power_of_two", "random")


class Router:
    """An sglang-router process. `start()` blocks until it answers; `url` is valid after it."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        policy: str = "round_robin",
        startup_timeout_s: float = 60.0,
        request_timeout_s: float = 600.0,
        log_path: str | None = None,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"router policy {policy!r} is unknown; choose one of {POLICIES}")
        self.host, self.policy = host, policy
        self.startup_timeout_s, self.request_timeout_s = startup_timeout_s, request_timeout_s
        self.log_path = Path(log_path) if log_path else None
        self.port: int | None = None
        self._proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise ServiceError("router is not started; call start() first")
        return f"http://{self.host}:{self.port}"

    def start(self, worker_urls: list[str] | None = None) -> str:
        """Start the router (optionally with workers) and wait until `/workers` answers; returns its URL."""
        self.port = free_port(self.host)
        argv = [sys.executable, "-m", "sglang_router.launch_router", "--host", self.host, "--port", str(self.port)]
        argv += ["--policy", self.policy, "--request-timeout-secs", str(int(self.request_timeout_s))]
        argv += ["--log-level", "warn"]
        # The router exports Prometheus metrics on 0.0.0.0:29000 by default: keep them on our host and on a
        # port of their own, so two runs on one machine do not collide and nothing listens beyond loopback.
        argv += ["--prometheus-host", self.host, "--prometheus-port", str(free_port(self.host))]
        if worker_urls:
            argv += ["--worker-urls", *worker_urls]
        self._proc = spawn(argv, log_path=str(self.log_path) if self.log_path else None)
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            try:
                if httpx.get(f"{self.url}/workers", timeout=2.0).status_code == 200:
                    logger.info("sglang-router up at %s (pid %d, %s)", self.url, self._proc.pid, self.policy)
                    return self.url
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        exit_code = self._proc.poll()
        self.stop()
        why = (
            f"exited with code {exit_code} during start-up"
            if exit_code is not None
            else f"did not answer within {self.startup_timeout_s:.0f}s"
        )
        raise ServiceError(f"sglang-router at {self.url} {why}. Log tail ({self.log_path}):\n{log_tail(self.log_path)}")

    def _workers(self) -> list[dict]:
        response = httpx.get(f"{self.url}/workers", timeout=10.0)
        response.raise_for_status()
        return response.json().get("workers", [])

    def list_workers(self) -> list[str]:
        """URLs of the registered workers."""
        return [w["url"] for w in self._workers()]

    def add_worker(self, url: str, timeout_s: float = 30.0) -> None:
        """Register `url` and wait until the router lists it as healthy (registration is asynchronous)."""
        response = httpx.post(f"{self.url}/workers", json={"url": url}, timeout=10.0)
        if response.status_code >= 400:
            raise ServiceError(f"router {self.url} refused worker {url}: HTTP {response.status_code} {response.text}")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(w["url"] == url and w.get("is_healthy", True) for w in self._workers()):
                return
            time.sleep(0.05)
        raise ServiceError(f"router {self.url} did not activate worker {url} within {timeout_s:.0f}s")

    def remove_worker(self, url: str, timeout_s: float = 30.0) -> None:
        """Unregister `url` and wait until the router no longer lists it. Unknown URLs are ignored."""
        for worker in self._workers():
            if worker["url"] == url:
                response = httpx.delete(f"{self.url}/workers/{worker['id']}", timeout=10.0)
                if response.status_code >= 400:
                    raise ServiceError(f"router {self.url} refused to remove {url}: HTTP {response.status_code}")
        deadline = time.monotonic() + timeout_s
        while url in self.list_workers():
            if time.monotonic() > deadline:
                raise ServiceError(f"router {self.url} still lists {url} after {timeout_s:.0f}s")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the router by PID. Safe to call twice."""
        if self._proc is not None:
            stop(self._proc)
            self._proc = None
