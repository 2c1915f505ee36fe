"""Processes that serve simulated engines: `SimulatedProcess` (one process, many engines) and `SimulatedEngines`.

Owns those processes: each is spawned with `slime_rl.processes.spawn` (it dies with its parent), serves its engines
on free ports (or on given ones, to come back where it was), reports their URLs through a file once every engine
accepts connections, and is stopped by PID. `SimulatedEngines` starts as few processes as
`cfg.simulated.engines_per_process` allows, for the profiler's benchmarks; a run's fleet
(orchestration/engines.py) hosts one `SimulatedProcess` per engine host actor.
"""

from __future__ import annotations

import json
import logging
import subprocess
import tempfile
import time
from pathlib import Path

from slime_rl.config.engine import EngineConfig
from slime_rl.engines.server import simulated_command
from slime_rl.errors import ServiceError
from slime_rl.processes import log_tail, spawn, stop

logger = logging.getLogger(__name__)


class SimulatedProcess:
    """One `python -m slime_rl.engines.simulated` process serving `num_engines` engines on `cfg.host`.

    `start()` blocks until every engine accepts connections and returns their URLs (in engine order);
    `launch()` and `wait()` are its two halves, for starting several processes at once. A failed start raises
    `ServiceError` with the tail of the process's log.
    """

    def __init__(self, cfg: EngineConfig, model_path: str, num_engines: int, *, log_path: str | None = None) -> None:
        if num_engines < 1:
            raise ValueError(f"num_engines must be >= 1, got {num_engines}")
        self.cfg = cfg
        self.model_path = model_path
        self.num_engines = num_engines
        self.log_path = Path(log_path) if log_path else None
        self.host = cfg.host or "127.0.0.1"
        self.urls: list[str] = []
        self._proc: subprocess.Popen | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def ports(self) -> list[int]:
        return [int(url.rsplit(":", 1)[1]) for url in self.urls]

    def launch(self, ports: list[int] | None = None) -> None:
        """Spawn the process, its engines on `ports` (one each) or on free ports; `wait()` for it to serve."""
        if self._proc is not None and self._proc.poll() is None:
            raise ServiceError(f"simulated engines already running (pid {self._proc.pid})")
        if ports is not None and len(ports) != self.num_engines:
            raise ValueError(f"{self.num_engines} engines need {self.num_engines} ports, got {len(ports)}")
        self._cleanup()
        self._tmp = tempfile.TemporaryDirectory(prefix="slime-rl-simulated-")
        argv = simulated_command(
            self.cfg,
            self.model_path,
            self.host,
            0,
            num_engines=self.num_engines,
            ports=ports,
            urls_file=str(self._urls_file),
        )
        self._proc = spawn(argv, log_path=str(self.log_path) if self.log_path else None)

    @property
    def _urls_file(self) -> Path:
        assert self._tmp is not None, "launch() first"
        return Path(self._tmp.name) / "urls.json"

    def wait(self) -> list[str]:
        """Block until the launched process serves every engine; returns their URLs. A failed start stops it."""
        assert self._proc is not None, "launch() first"
        deadline = time.monotonic() + self.cfg.startup_timeout_s
        while time.monotonic() < deadline:
            if self._urls_file.exists():
                self.urls = json.loads(self._urls_file.read_text())["urls"]
                logger.info("%d simulated engine(s) up at %s ... (pid %d)", len(self.urls), self.urls[0], self.pid)
                return self.urls
            if self._proc.poll() is not None:
                raise ServiceError(
                    f"simulated engines (pid {self._proc.pid}) exited with code {self._proc.returncode} during "
                    f"start-up. Log tail ({self.log_path}):\n{log_tail(self.log_path)}"
                )
            time.sleep(0.05)
        pid = self._proc.pid
        self.stop()
        raise ServiceError(
            f"simulated engines (pid {pid}) did not serve within {self.cfg.startup_timeout_s:.0f}s "
            f"(engine.startup_timeout_s). Log tail ({self.log_path}):\n{log_tail(self.log_path)}"
        )

    def start(self, ports: list[int] | None = None) -> list[str]:
        self.launch(ports)
        return self.wait()

    def restart(self, *, force: bool = False) -> list[str]:
        """Stop and start again on the same ports, so routers keep the same worker URLs.

        `force` kills the old process at once (SIGKILL): a stopped (hung) process would not act on SIGTERM.
        """
        ports = self.ports or None
        if force and self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self.stop()
        return self.start(ports)

    def is_alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        """Stop the process by PID (SIGTERM, then SIGKILL). Safe to call twice."""
        if self._proc is not None:
            stop(self._proc)
            self._proc = None
        self._cleanup()

    def _cleanup(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


class SimulatedEngines:
    """Context manager: `with SimulatedEngines(cfg, 256) as urls:` serves 256 simulated engines on `cfg.host`.

    `cfg.simulated` gives the cost model and lengths; `max_running_requests`, `max_context_len`,
    `max_prefill_tokens` and `weight_version` come from `cfg` as for any engine.
    """

    def __init__(
        self, cfg: EngineConfig, num_engines: int, *, model_path: str = "simulated", log_dir: str | None = None
    ) -> None:
        if num_engines < 1:
            raise ValueError(f"num_engines must be >= 1, got {num_engines}")
        self.cfg = cfg
        self.num_engines = num_engines
        self.model_path = model_path
        self.log_dir = log_dir
        self.urls: list[str] = []
        self.processes: list[SimulatedProcess] = []
        self._tmp: tempfile.TemporaryDirectory | None = None

    def __enter__(self) -> list[str]:
        per_process = self.cfg.simulated.engines_per_process
        counts = [min(per_process, self.num_engines - i) for i in range(0, self.num_engines, per_process)]
        if self.log_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="slime-rl-simulated-logs-")
        log_dir = Path(self.log_dir or self._tmp.name)  # type: ignore[union-attr]
        try:
            for index, count in enumerate(counts):
                log = str(log_dir / f"simulated_{index}.log")
                self.processes.append(SimulatedProcess(self.cfg, self.model_path, count, log_path=log))
                self.processes[-1].launch()  # all at once: their start-ups overlap
            for process in self.processes:
                self.urls += process.wait()
        except BaseException:
            self.__exit__()
            raise
        logger.info("%d simulated engines in %d process(es)", self.num_engines, len(self.processes))
        return self.urls

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes if p.pid is not None]

    def __exit__(self, *_: object) -> None:
        for process in self.processes:
            process.stop()
        self.processes = []
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
