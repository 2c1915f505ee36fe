"""Engine actors and the router in front of them, and which engines serve.

Each engine is a Ray actor placed in its bundle; it owns one engine server process (native or SGLang)
that dies with it. The router is the real `sglang-router`, started by the driver's process; engines
register with it through its HTTP API. Rollout code only ever sees the router's and engines' URLs.
Every server logs to the run dir's `logs/` folder; a failed start's error carries the log's tail.

Fault tolerance (`engine.fault_tolerance`): an engine is `serving` (in the router, at the trainer's
weight version), `down` (taken out of the router; being restarted) or `awaiting_sync` (restarted, on
stale weights, not yet in the router). The `EngineMonitor` (engine_health.py) moves engines to `down`
and restarts them; the training loop brings `awaiting_sync` engines to the current weights and puts them
back (`put_back`), since only it knows when the trainer's weights are the published ones. An engine keeps
its URL across restarts. Every move is appended to `{log_dir}/engine_events.jsonl`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import ray

from slime_rl.config.engine import EngineConfig
from slime_rl.engines.router import Router
from slime_rl.engines.server import EngineProcess
from slime_rl.errors import ServiceError
from slime_rl.orchestration.cluster import Located
from slime_rl.orchestration.placement import Placement

logger = logging.getLogger(__name__)

SERVING, DOWN, AWAITING_SYNC = "serving", "down", "awaiting_sync"
EVENTS_FILE = "engine_events.jsonl"


class EngineHost(Located):
    """Actor body: one engine server process on this actor's node; `torch` threads = its bundle's CPUs."""

    def __init__(self, cfg: EngineConfig, model_path: str, log_path: str) -> None:
        if cfg.host is None:  # listen where the router and the trainer on other nodes reach it
            cfg = dataclasses.replace(cfg, host=ray.util.get_node_ip_address())
        self.process = EngineProcess(cfg, model_path, log_path=log_path)

    def start(self, port: int | None = None) -> str:
        return self.process.start(port)

    def restart(self) -> str:
        return self.process.restart(force=True)

    def is_alive(self) -> bool:
        return self.process.is_alive()

    def stop(self) -> None:
        self.process.stop()


@dataclass
class EngineState:
    url: str
    state: str = SERVING
    restarts: int = 0


class EngineFleet:
    """`num_engines` engine actors behind one router. Use as a context manager; exiting stops everything.

    Engine i logs to `{log_dir}/engine_{i}.log` (on its actor's node), the router to `{log_dir}/router.log`.
    `on_change(serving_urls)` is called (outside the fleet's lock) whenever the serving set changes.
    """

    def __init__(self, cfg: EngineConfig, model_path: str, placement: Placement, *, log_dir: Path) -> None:
        self.cfg = cfg
        self.model_path = model_path
        self.placement = placement
        self.log_dir = log_dir
        self.hosts: list[ray.actor.ActorHandle] = []
        self.engines: list[EngineState] = []
        self.router = Router(
            host=cfg.host or ray.util.get_node_ip_address(),  # the driver's node
            policy=cfg.router_policy,
            request_timeout_s=cfg.request_timeout_s,
            log_path=str(log_dir / "router.log"),
        )
        self.router_url = ""
        self.on_change: Callable[[list[str]], None] | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> EngineFleet:
        try:
            self.hosts = [self._new_host(i) for i in range(len(self.placement.engine_slots))]
            urls = ray.get([h.start.remote() for h in self.hosts])
            self.engines = [EngineState(url) for url in urls]
            self.router_url = self.router.start()
            for url in urls:
                self.router.add_worker(url)
        except BaseException:
            self.__exit__()
            raise
        logger.info("%d %s engine(s) behind router %s", len(self.hosts), self.cfg.kind, self.router_url)
        return self

    def _new_host(self, index: int) -> ray.actor.ActorHandle:
        slot = self.placement.engine_slots[index]
        return (
            ray.remote(EngineHost)
            .options(**slot.options(self.placement.pg))
            .remote(self.cfg, self.model_path, str(self.log_dir / f"engine_{index}.log"))
        )

    @property
    def engine_urls(self) -> list[str]:
        """Every engine's URL, serving or not (URLs survive restarts)."""
        return [e.url for e in self.engines]

    def serving_urls(self) -> list[str]:
        with self._lock:
            return [e.url for e in self.engines if e.state == SERVING]

    def urls_in(self, state: str) -> list[str]:
        with self._lock:
            return [e.url for e in self.engines if e.state == state]

    def state(self, index: int) -> str:
        with self._lock:
            return self.engines[index].state

    def take_out(self, index: int, reason: str) -> bool:
        """Move a serving (or restarted, not yet synced) engine to `down` and remove it from the router.
        False if it was down already."""
        with self._lock:
            engine = self.engines[index]
            if engine.state == DOWN:
                return False
            engine.state = DOWN
        logger.warning("engine %d (%s) is out of service: %s", index, engine.url, reason)
        self._record(index, "down", reason=reason)
        try:
            self.router.remove_worker(engine.url)
        except Exception as err:  # the router retries failed requests on the other workers meanwhile
            logger.warning("could not remove %s from the router: %s", engine.url, err)
        self._changed()
        return True

    def restart(self, index: int) -> bool:
        """Restart a `down` engine on its port (a new actor if its actor died); it then awaits a weight sync.

        Returns False without restarting once the engine has used `engine.max_restarts`. Raises what the
        start raised (the engine stays `down`, to be tried again).
        """
        with self._lock:
            engine = self.engines[index]
            assert engine.state == DOWN, f"engine {index} is {engine.state}, not down"
            if engine.restarts >= self.cfg.max_restarts:
                return False
            engine.restarts += 1
        port = int(engine.url.rsplit(":", 1)[1])
        try:
            url = ray.get(self.hosts[index].restart.remote())
        except ray.exceptions.RayActorError:  # the actor itself is gone: its process died with it
            self.hosts[index] = self._new_host(index)
            url = ray.get(self.hosts[index].start.remote(port))
        if url != engine.url:
            raise ServiceError(f"engine {index} came back at {url}, not at its own {engine.url}")
        with self._lock:
            engine.state = AWAITING_SYNC
        self._record(index, "restarted", restarts=engine.restarts)
        return True

    def put_back(self, url: str, version: int) -> None:
        """An `awaiting_sync` engine now holds weights `version`: add it to the router, serving."""
        index = self.engine_urls.index(url)
        self.router.add_worker(url)
        with self._lock:
            self.engines[index].state = SERVING
        logger.info("engine %d (%s) serves again at weight version %d", index, url, version)
        self._record(index, "serving", version=version)
        self._changed()

    def is_alive(self, index: int, timeout_s: float) -> bool:
        """Whether engine `index`'s server process (and its actor) is alive; False if the actor does not answer."""
        try:
            return ray.get(self.hosts[index].is_alive.remote(), timeout=timeout_s)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            return False

    def _record(self, index: int, event: str, **fields: object) -> None:
        record = {"time": time.time(), "engine": index, "url": self.engines[index].url, "event": event, **fields}
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / EVENTS_FILE, "a") as f:
            f.write(json.dumps(record) + "\n")

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(self.serving_urls())

    def __exit__(self, *exc: object) -> None:
        self.router.stop()
        stops = [h.stop.remote() for h in self.hosts]
        for host, stopped in zip(self.hosts, stops, strict=True):
            with contextlib.suppress(ray.exceptions.RayError):  # an actor that died took its engine with it
                ray.get(stopped, timeout=60)
            ray.kill(host)
        self.hosts = []
