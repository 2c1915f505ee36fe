"""Engine actors and the router in front of them.

Each engine is a Ray actor placed in its bundle; it owns one engine server process (native or SGLang)
that dies with it. The router is the real `sglang-router`, started by the driver's process; engines
register with it through its HTTP API. Rollout code only ever sees the router's and engines' URLs.
Every server logs to the run dir's `logs/` folder; a failed start's error carries the log's tail.
"""

from __future__ import annotations

import logging
from pathlib import Path

import ray

from slime_rl.config.engine import EngineConfig
from slime_rl.engines.router import Router
from slime_rl.engines.server import EngineProcess
from slime_rl.orchestration.placement import Placement

logger = logging.getLogger(__name__)


class EngineHost:
    """Actor body: one engine server process on this actor's node; `torch` threads = its bundle's CPUs."""

    def __init__(self, cfg: EngineConfig, model_path: str, log_path: str) -> None:
        self.process = EngineProcess(cfg, model_path, log_path=log_path)

    def start(self) -> str:
        return self.process.start()

    def restart(self) -> str:
        return self.process.restart()

    def stop(self) -> None:
        self.process.stop()


class EngineFleet:
    """`num_engines` engine actors behind one router. Use as a context manager; exiting stops everything.

    Engine i logs to `{log_dir}/engine_{i}.log` (on its actor's node), the router to `{log_dir}/router.log`.
    """

    def __init__(self, cfg: EngineConfig, model_path: str, placement: Placement, *, log_dir: Path) -> None:
        self.cfg = cfg
        self.model_path = model_path
        self.placement = placement
        self.log_dir = log_dir
        self.hosts: list[ray.actor.ActorHandle] = []
        self.engine_urls: list[str] = []
        self.router = Router(
            host=cfg.host,
            policy=cfg.router_policy,
            request_timeout_s=cfg.request_timeout_s,
            log_path=str(log_dir / "router.log"),
        )
        self.router_url = ""

    def __enter__(self) -> EngineFleet:
        host_cls = ray.remote(EngineHost)
        try:
            self.hosts = [
                host_cls.options(**slot.options(self.placement.pg)).remote(
                    self.cfg, self.model_path, str(self.log_dir / f"engine_{i}.log")
                )
                for i, slot in enumerate(self.placement.engine_slots)
            ]
            self.engine_urls = ray.get([h.start.remote() for h in self.hosts])
            self.router_url = self.router.start()
            for url in self.engine_urls:
                self.router.add_worker(url)
        except BaseException:
            self.__exit__()
            raise
        logger.info("%d %s engine(s) behind router %s", len(self.hosts), self.cfg.kind, self.router_url)
        return self

    def restart_engine(self, index: int) -> str:
        """Restart engine `index` (e.g. after it died) and swap its URL in the router."""
        old = self.engine_urls[index]
        self.router.remove_worker(old)
        self.engine_urls[index] = ray.get(self.hosts[index].restart.remote())
        self.router.add_worker(self.engine_urls[index])
        return self.engine_urls[index]

    def __exit__(self, *exc: object) -> None:
        self.router.stop()
        if self.hosts:
            ray.get([h.stop.remote() for h in self.hosts])
        for host in self.hosts:
            ray.kill(host)
        self.hosts = []
