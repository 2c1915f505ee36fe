"""Engine actors and the router in front of them, and which engines serve.

Engines run in engine hosts: Ray actors placed in their bundles, each owning one server process that dies
with it. A native or SGLang process serves one engine; a simulated one serves up to
`engine.simulated.engines_per_process` engines (each on its own port), so hundreds fit on a few CPUs (the
plan asks one bundle per host: plan.py). The router is the real `sglang-router`, started by the driver's
process; engines register with it through its HTTP API. Rollout code only ever sees the router's and
engines' URLs. Every server logs to the run dir's `logs/` folder; a failed start's error carries the log's
tail.

Fault tolerance (`engine.fault_tolerance`): an engine is `serving` (in the router, at the trainer's
weight version), `down` (taken out of the router; being restarted) or `awaiting_sync` (restarted, on
stale weights, not yet in the router). States are per engine, restarts per host: a host's process that
dies takes all its engines down, and its restart brings them all back on their ports. The
`EngineMonitor` (engine_health.py) moves engines to `down` and restarts their hosts; the training loop
brings `awaiting_sync` engines to the current weights and puts them back (`put_back`), since only it
knows when the trainer's weights are the published ones. An engine keeps its URL across restarts. Every
move is appended to `{log_dir}/engine_events.jsonl`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import ray

from slime_rl.config.engine import EngineConfig
from slime_rl.engines.router import Router
from slime_rl.engines.server import EngineProcess
from slime_rl.engines.simulated.launcher import SimulatedProcess
from slime_rl.errors import ServiceError
from slime_rl.orchestration.cluster import Located
from slime_rl.orchestration.placement import Placement
from slime_rl.orchestration.plan import engine_hosts, engines_per_host

logger = logging.getLogger(__name__)

SERVING, DOWN, AWAITING_SYNC = "serving", "down", "awaiting_sync"
EVENTS_FILE = "engine_events.jsonl"
_ROUTER_CALLS_AT_ONCE = 16
_T = TypeVar("_T")
_R = TypeVar("_R")


class EngineHost(Located):
    """Actor body: one server process on this actor's node, serving `num_engines` engines (more than one only for
    kind=simulated); a native engine runs as many `torch` threads as its bundle has CPUs."""

    def __init__(self, cfg: EngineConfig, model_path: str, log_path: str, num_engines: int = 1) -> None:
        if cfg.host is None:  # listen where the router and the trainer on other nodes reach it
            cfg = dataclasses.replace(cfg, host=ray.util.get_node_ip_address())
        self.process: EngineProcess | SimulatedProcess
        if cfg.kind == "simulated":
            self.process = SimulatedProcess(cfg, model_path, num_engines, log_path=log_path)
        elif num_engines == 1:
            self.process = EngineProcess(cfg, model_path, log_path=log_path)
        else:
            raise ValueError(f"a {cfg.kind} engine process serves one engine, not {num_engines}")

    def start(self, ports: list[int] | None = None) -> list[str]:
        """Start the process (its engines on `ports`, or free ones); returns the engines' URLs."""
        if isinstance(self.process, SimulatedProcess):
            return self.process.start(ports)
        return [self.process.start(ports[0] if ports else None)]

    def restart(self) -> list[str]:
        """Kill the process and start it again on its ports; returns the engines' (unchanged) URLs."""
        urls = self.process.restart(force=True)
        return urls if isinstance(urls, list) else [urls]

    def is_alive(self) -> bool:
        return self.process.is_alive()

    def pid(self) -> int | None:
        """PID of the server process (None when stopped)."""
        return self.process.pid

    def stop(self) -> None:
        self.process.stop()


def _each(fn: Callable[[_T], _R], items: list[_T]) -> list[_R]:
    """`fn` on every item, a few at once (router calls wait on the router: one by one, 256 engines take a minute);
    results in order, the first exception raised."""
    if len(items) <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(_ROUTER_CALLS_AT_ONCE, len(items))) as pool:
        return list(pool.map(fn, items))


@dataclass
class EngineState:
    url: str
    state: str = SERVING
    restarts: int = 0


class EngineFleet:
    """The engines of `placement` (one slot each) in their host actors, behind one router. Use as a context
    manager; exiting stops everything.

    Host h serves engines `host_engines[h]`; `host_of[i]` is engine i's host. A one-engine host logs to
    `{log_dir}/engine_{i}.log`, a host of engines i..j to `{log_dir}/engines_{i}-{j}.log` (on its actor's
    node), the router to `{log_dir}/router.log`. `on_change(serving_urls)` is called (outside the fleet's lock)
    whenever the serving set changes.
    """

    def __init__(self, cfg: EngineConfig, model_path: str, placement: Placement, *, log_dir: Path) -> None:
        self.cfg = cfg
        self.model_path = model_path
        self.placement = placement
        self.log_dir = log_dir
        self.host_engines = engine_hosts(len(placement.engine_slots), engines_per_host(cfg))
        self.host_of = [h for h, members in enumerate(self.host_engines) for _ in members]
        self.hosts: list[ray.actor.ActorHandle] = []
        self.engines: list[EngineState] = []
        self._host_locks = [threading.Lock() for _ in self.host_engines]  # one restart of a host at a time
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
            self.hosts = [self._new_host(h) for h in range(len(self.host_engines))]
            urls = [url for host_urls in ray.get([h.start.remote() for h in self.hosts]) for url in host_urls]
            self.engines = [EngineState(url) for url in urls]
            self.router_url = self.router.start()
            _each(self.router.add_worker, urls)
        except BaseException:
            self.__exit__()
            raise
        logger.info(
            "%d %s engine(s) in %d process(es) behind router %s",
            len(self.engines),
            self.cfg.kind,
            len(self.hosts),
            self.router_url,
        )
        return self

    def _new_host(self, host: int) -> ray.actor.ActorHandle:
        members = self.host_engines[host]
        slot = self.placement.engine_slots[members[0]]  # the engines of a host share its bundle
        name = f"engine_{members[0]}" if len(members) == 1 else f"engines_{members[0]}-{members[-1]}"
        return (
            ray.remote(EngineHost)
            .options(**slot.options(self.placement.pg))
            .remote(self.cfg, self.model_path, str(self.log_dir / f"{name}.log"), len(members))
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

    def take_out_all(self, reasons: dict[int, str]) -> list[int]:
        """`take_out` each engine of `reasons` with its reason, several at once; returns those it took out."""
        indices = list(reasons)
        taken = _each(lambda i: self.take_out(i, reasons[i]), indices)
        return [i for i, was_taken in zip(indices, taken, strict=True) if was_taken]

    def restart(self, index: int) -> bool:
        """Restart the host of `down` engine `index` on its ports (a new actor if its actor died): every engine of
        that host is taken out for it (its process goes) and then awaits a weight sync.

        Returns False without restarting once engine `index` has used `engine.max_restarts` (each restart of its
        host counts for each of its engines); True also when its host was restarted meanwhile, with another of
        its engines. Raises what the start raised (the engines stay `down`, to be tried again).
        """
        host = self.host_of[index]
        members = self.host_engines[host]
        with self._host_locks[host]:
            with self._lock:
                if self.engines[index].state != DOWN:
                    return True
                if self.engines[index].restarts >= self.cfg.max_restarts:
                    return False
            reason = f"its server process restarts (with engine {index})"
            self.take_out_all({other: reason for other in members if other != index})
            with self._lock:
                for member in members:
                    self.engines[member].restarts += 1
            expected = [self.engines[member].url for member in members]
            try:
                urls = ray.get(self.hosts[host].restart.remote())
            except ray.exceptions.RayActorError:  # the actor itself is gone: its process died with it
                self.hosts[host] = self._new_host(host)
                ports = [int(url.rsplit(":", 1)[1]) for url in expected]
                urls = ray.get(self.hosts[host].start.remote(ports))
            if urls != expected:
                raise ServiceError(f"engines {members} came back at {urls}, not at their own {expected}")
            with self._lock:
                for member in members:
                    self.engines[member].state = AWAITING_SYNC
            for member in members:
                self._record(member, "restarted", restarts=self.engines[member].restarts)
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
        return self.hosts_alive([self.host_of[index]], timeout_s)[self.host_of[index]]

    def hosts_alive(self, hosts: list[int], timeout_s: float) -> dict[int, bool]:
        """Whether each of `hosts` has its server process (and its actor) alive; False where the actor does not
        answer within `timeout_s` (all asked at once)."""
        if not hosts:
            return {}
        alive_refs = {h: self.hosts[h].is_alive.remote() for h in hosts}
        ready, _ = ray.wait(list(alive_refs.values()), num_returns=len(alive_refs), timeout=timeout_s)
        answered = set(ready)
        alive = {}
        for h, ref in alive_refs.items():
            try:
                alive[h] = ref in answered and ray.get(ref)  # answered: returns at once
            except ray.exceptions.RayActorError:
                alive[h] = False
        return alive

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
