"""Life cycle of one engine server process (native, SGLang or simulated): start on a free port, wait for health, stop.

Owns the child process, its port and its log file. A plain class: the Ray actor that hosts engines
wraps it in orchestration/. Every process is started with `slime_rl.processes.spawn` (it dies with its
parent) and stopped by PID.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

import httpx

from slime_rl.config.engine import EngineConfig
from slime_rl.engines.sglang import sglang_command
from slime_rl.errors import ConfigError, ServiceError
from slime_rl.processes import free_port, log_tail, spawn, stop

logger = logging.getLogger(__name__)

_PORT_ATTEMPTS = 3  # a free port can be taken by someone else before the server binds it


def native_command(cfg: EngineConfig, model_path: str, host: str, port: int) -> list[str]:
    """argv of `python -m slime_rl.engines.native` for `cfg`."""
    return [
        sys.executable,
        "-m",
        "slime_rl.engines.native",
        "--model-path",
        model_path,
        "--host",
        host,
        "--port",
        str(port),
        "--device",
        cfg.device,
        "--dtype",
        cfg.dtype,
        "--max-running-requests",
        str(cfg.max_running_requests),
        "--max-context-len",
        str(cfg.max_context_len),
        "--max-prefill-tokens",
        str(cfg.max_prefill_tokens),
        "--num-threads",
        str(cfg.num_threads),
        "--weight-version",
        cfg.weight_version,
    ]


def simulated_command(
    cfg: EngineConfig,
    model_path: str,
    host: str,
    port: int,
    *,
    num_engines: int = 1,
    ports: list[int] | None = None,
    urls_file: str | None = None,
) -> list[str]:
    """argv of `python -m slime_rl.engines.simulated` serving `num_engines` simulated engines for `cfg` on `ports`
    (one each) or else from `port` on (0: free ports), writing their URLs to `urls_file` if given."""
    sim = cfg.simulated
    argv = [
        sys.executable,
        "-m",
        "slime_rl.engines.simulated",
        "--num-engines",
        str(num_engines),
        "--host",
        host,
        "--port",
        str(port),
        "--model-path",
        model_path,
        "--max-running-requests",
        str(cfg.max_running_requests),
        "--max-context-len",
        str(cfg.max_context_len),
        "--max-prefill-tokens",
        str(cfg.max_prefill_tokens),
        "--weight-version",
        cfg.weight_version,
        "--seed",
        str(sim.seed),
        "--vocab-size",
        str(sim.vocab_size),
        "--eos-token-id",
        str(sim.eos_token_id),
        "--decode-step-base-ms",
        str(sim.decode_step_base_ms),
        "--decode-row-ms",
        str(sim.decode_row_ms),
        "--decode-context-token-us",
        str(sim.decode_context_token_us),
        "--prefill-token-us",
        str(sim.prefill_token_us),
        "--prefill-base-ms",
        str(sim.prefill_base_ms),
        "--length-median",
        str(sim.length_median),
        "--length-sigma",
        str(sim.length_sigma),
    ]
    if sim.calibration_path:
        argv += ["--calibration", sim.calibration_path]
    if sim.length_trace_path:
        argv += ["--length-trace", sim.length_trace_path]
    if ports:
        argv += ["--ports", ",".join(str(p) for p in ports)]
    if urls_file:
        argv += ["--urls-file", urls_file]
    return argv


_COMMANDS = {"native": native_command, "sglang": sglang_command, "simulated": simulated_command}


class EngineProcess:
    """One engine server. `start()` blocks until `/health` answers 200; `url` is valid after it."""

    def __init__(self, cfg: EngineConfig, model_path: str, *, log_path: str | None = None) -> None:
        if cfg.kind not in _COMMANDS:
            raise ConfigError(f"engine.kind={cfg.kind!r} has no server process; EngineProcess runs {sorted(_COMMANDS)}")
        self.cfg = cfg
        self.model_path = model_path
        self.log_path = Path(log_path) if log_path else None
        self.port: int | None = None
        self._proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise ServiceError("engine is not started; call start() first")
        return f"http://{self.cfg.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def command(self, port: int) -> list[str]:
        return _COMMANDS[self.cfg.kind](self.cfg, self.model_path, self.cfg.host, port)

    def start(self, port: int | None = None) -> str:
        """Start the server (on `port`, or a free one) and wait for it to be healthy; returns its URL.

        A failed start raises `ServiceError` with the tail of the engine's log.
        """
        if self._proc is not None and self._proc.poll() is None:
            raise ServiceError(f"engine already running at {self.url} (pid {self._proc.pid})")
        failure = "was not started"
        for attempt in range(_PORT_ATTEMPTS):
            self.port = port or free_port(self.cfg.host)
            self._proc = spawn(self.command(self.port), log_path=str(self.log_path) if self.log_path else None)
            failure = self._wait_healthy(self._proc)
            if failure is None:
                logger.info("%s engine up at %s (pid %d)", self.cfg.kind, self.url, self._proc.pid)
                return self.url
            if port is not None or attempt + 1 == _PORT_ATTEMPTS or not failure.startswith("exited"):
                break
            logger.warning("engine exited during start-up on port %d; retrying on another port", self.port)
        raise ServiceError(
            f"{self.cfg.kind} engine for {self.model_path} at {self.url} {failure}. "
            f"Log tail ({self.log_path}):\n{log_tail(self.log_path)}"
        )

    def _wait_healthy(self, proc: subprocess.Popen) -> str | None:
        """None once /health answers 200, else why not (it exited, or it timed out and was stopped)."""
        deadline = time.monotonic() + self.cfg.startup_timeout_s
        with httpx.Client(timeout=2.0) as http:
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    return f"exited with code {proc.returncode} during start-up"
                try:
                    if http.get(f"{self.url}/health").status_code == 200:
                        return None
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
        stop(proc)
        return f"did not become healthy within {self.cfg.startup_timeout_s:.0f}s (engine.startup_timeout_s)"

    def is_alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        """Stop the server by PID (SIGTERM, then SIGKILL). Safe to call twice."""
        if self._proc is not None:
            stop(self._proc)
            self._proc = None

    def restart(self, *, force: bool = False) -> str:
        """Stop and start again on the same port, so routers keep the same worker URL.

        `force` kills the old process at once (SIGKILL) instead of asking it to exit: for a hung engine,
        which would not act on SIGTERM (a stopped process does not even run its handler).
        """
        port = self.port
        if force and self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self.stop()
        return self.start(port)
