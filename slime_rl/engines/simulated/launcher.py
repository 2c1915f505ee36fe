"""`SimulatedEngines`: start simulated engines in as few processes as `engines_per_process` allows, yield URLs.

Owns those processes: each is spawned with `slime_rl.processes.spawn` (it dies with its parent), serves up to
`cfg.simulated.engines_per_process` engines on free ports, and is stopped by PID on exit. For the profiler and
benchmarks; a training run's fleet starts engines one per EngineHost through `EngineProcess` instead.
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
        self.procs: list[subprocess.Popen] = []
        self._tmp: tempfile.TemporaryDirectory | None = None

    def __enter__(self) -> list[str]:
        self._tmp = tempfile.TemporaryDirectory(prefix="slime-rl-simulated-")
        per_process = self.cfg.simulated.engines_per_process
        counts = [min(per_process, self.num_engines - i) for i in range(0, self.num_engines, per_process)]
        files, logs = [], []
        try:
            for index, count in enumerate(counts):
                files.append(Path(self._tmp.name) / f"urls_{index}.json")
                log = Path(self.log_dir or self._tmp.name) / f"simulated_{index}.log"
                logs.append(log)
                argv = simulated_command(
                    self.cfg,
                    self.model_path,
                    self.cfg.host or "127.0.0.1",
                    0,
                    num_engines=count,
                    urls_file=str(files[-1]),
                )
                self.procs.append(spawn(argv, log_path=str(log)))
            for proc, path, log in zip(self.procs, files, logs, strict=True):
                self.urls += self._wait(proc, path, log)
        except BaseException:
            self.__exit__()
            raise
        logger.info("%d simulated engines in %d process(es)", self.num_engines, len(self.procs))
        return self.urls

    def _wait(self, proc: subprocess.Popen, path: Path, log: Path) -> list[str]:
        deadline = time.monotonic() + self.cfg.startup_timeout_s
        while time.monotonic() < deadline:
            if path.exists():
                return json.loads(path.read_text())["urls"]
            if proc.poll() is not None:
                raise ServiceError(
                    f"simulated engines (pid {proc.pid}) exited with code {proc.returncode} during start-up. "
                    f"Log tail ({log}):\n{log_tail(log)}"
                )
            time.sleep(0.05)
        raise ServiceError(
            f"simulated engines (pid {proc.pid}) did not serve within {self.cfg.startup_timeout_s:.0f}s "
            f"(engine.startup_timeout_s). Log tail ({log}):\n{log_tail(log)}"
        )

    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc in self.procs]

    def __exit__(self, *_: object) -> None:
        for proc in self.procs:
            stop(proc)
        self.procs = []
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
