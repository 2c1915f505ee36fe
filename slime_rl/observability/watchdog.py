"""Hang watchdog: when nothing progresses for `watchdog.timeout_s`, dump every stack, then fail or keep waiting.

Progress is a change of the probe's token (the driver's: step, buffer counters, engines' generated
tokens), a `beat()` or a new `stage()`. A hang writes `<run_dir>/hang_<UTC time>/` (see `stack_dump`) and
logs one ERROR line naming the driver's stage and the Ray tasks that were running.

How a hang reaches the main thread (`on_hang=fail`): the watchdog thread records the failure and sends
`INTERRUPT_SIGNAL` to the main thread; its handler, installed for the duration of the `with` block, raises
`KeyboardInterrupt`. A signal aimed at the main thread cuts short a blocking system call (`time.sleep`,
a socket read), and `ray.get` checks for signals about once a second and turns a `KeyboardInterrupt`
raised there into its own. `KeyboardInterrupt` is a `BaseException`, so no `except Exception` on the way
swallows it and every `finally`/`with` between the blocked call and the watchdog still cleans up;
`__exit__` then replaces it with a one-line `ServiceError`. A dedicated signal, not SIGINT, because a
process started in the background inherits SIGINT ignored and Python then never handles it.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType, TracebackType

from slime_rl.config.watchdog import WatchdogConfig
from slime_rl.errors import ServiceError
from slime_rl.observability.stack_dump import write_stack_dump

logger = logging.getLogger(__name__)

INTERRUPT_SIGNAL = signal.SIGUSR2


class Watchdog:
    """Watches `probe` on a daemon thread for the duration of a `with` block.

    `probe()` returns a hashable token that changes whenever the run makes progress; it is called every
    `cfg.check_interval_s` from a watchdog thread, so it must be thread-safe. A probe that raises, or has
    not answered within `check_interval_s`, counts as no progress (and is logged). With `cfg.enabled` false
    the block runs unwatched. `on_hang=fail` must be entered on the main thread (signal handlers live there).
    """

    def __init__(self, cfg: WatchdogConfig, run_dir: Path, probe: Callable[[], Hashable]) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.probe = probe
        self._lock = threading.Lock()
        self._last_beat = time.monotonic()
        self._stage = "starting"
        self._stage_since = self._last_beat
        self._failure: str | None = None  # set once a hang ends the run (`on_hang=fail`)
        self._is_closed = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="watchdog", daemon=True)
        self._probe_call: Future[Hashable] | None = None  # the probe call in progress, if it has not answered
        self._is_probe_late = False
        self._previous_handler: Callable[[int, FrameType | None], object] | int | None = None

    def beat(self) -> None:
        """Record progress the probe cannot see."""
        with self._lock:
            self._last_beat = time.monotonic()

    def stage(self, description: str) -> None:
        """Record what the driver does next (e.g. "waiting for rollout generate, step 5"); counts as progress."""
        with self._lock:
            self._stage = description
            self._stage_since = self._last_beat = time.monotonic()

    def __enter__(self) -> Watchdog:
        if not self.cfg.enabled:
            return self
        if self.cfg.on_hang == "fail":
            if threading.current_thread() is not threading.main_thread():
                raise ServiceError("watchdog.on_hang=fail needs the watchdog on the main thread; use on_hang=wait")
            self._previous_handler = signal.getsignal(INTERRUPT_SIGNAL)
            signal.signal(INTERRUPT_SIGNAL, self._on_signal)
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        with self._lock:
            self._is_closed = True  # a signal still on its way now does nothing
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if self.cfg.enabled and self.cfg.on_hang == "fail":
            # None: a handler installed outside Python; the default is the closest we can restore.
            signal.signal(INTERRUPT_SIGNAL, self._previous_handler or signal.SIG_DFL)
        if self._failure is not None and isinstance(exc, KeyboardInterrupt):
            raise ServiceError(self._failure) from exc

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # No lock here: the handler runs on the main thread between two bytecodes, maybe inside `stage()`
        # holding it. Reading the two attributes is atomic, and `_fail` sets them under the lock.
        if self._failure is not None and not self._is_closed:
            raise KeyboardInterrupt(self._failure)

    def _read_probe(self, previous: Hashable) -> Hashable:
        """The probe's token, or `previous` while it raises or has not answered within `check_interval_s`.

        The probe runs on its own daemon thread: a probe stuck on a hung service (Redis, an engine) must
        not stop the watchdog from reporting that very hang.
        """
        if self._probe_call is None:
            self._probe_call = Future()
            threading.Thread(
                target=self._call_probe, args=(self._probe_call,), name="watchdog-probe", daemon=True
            ).start()
        call = self._probe_call
        try:
            token = call.result(timeout=self.cfg.check_interval_s)
        except Exception as err:  # a failing probe must not end the watch: it is itself a sign of trouble
            if not call.done():
                if not self._is_probe_late:  # once per stuck call, not every check
                    logger.warning("watchdog: the progress probe has not answered; counting it as no progress")
                self._is_probe_late = True
                return previous
            logger.warning("watchdog: the progress probe failed (%s); counting it as no progress", err)
            token = previous
        self._probe_call, self._is_probe_late = None, False
        return token

    def _call_probe(self, call: Future[Hashable]) -> None:
        try:
            call.set_result(self.probe())
        except Exception as err:  # handed to the watchdog thread, which logs it
            call.set_exception(err)

    def _watch(self) -> None:
        try:
            self._watch_until_stopped()
        except Exception:  # the run goes on; a broken watchdog must not take it down
            logger.exception("watchdog failed; the run continues unwatched")

    def _watch_until_stopped(self) -> None:
        token = self._read_probe(None)
        changed_at = time.monotonic()
        hung_at: float | None = None  # the last progress before the current hang, while one lasts
        dumped_at = 0.0
        while not self._stop.wait(self.cfg.check_interval_s):
            new_token = self._read_probe(token)
            now = time.monotonic()
            if new_token != token:
                token, changed_at = new_token, now
            with self._lock:
                progress_at = max(changed_at, self._last_beat)
                stage, stage_since = self._stage, self._stage_since
            if hung_at is not None and progress_at > hung_at:
                logger.warning("watchdog: progress resumed %.0f s after the last hang dump", now - dumped_at)
                hung_at = None
            if now - progress_at < self.cfg.timeout_s:
                continue
            if hung_at is not None and now - dumped_at < self.cfg.timeout_s:
                continue  # `wait`: one dump per timeout period
            message = self._dump(now - progress_at, stage, now - stage_since)
            hung_at, dumped_at = progress_at, now
            if self.cfg.on_hang == "fail":
                self._fail(message)
                return

    def _dump(self, idle_s: float, stage: str, stage_s: float) -> str:
        """Write the dump folder and log the hang; returns the one-line account of it."""
        folder = self.run_dir / f"hang_{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
        if folder.exists():  # two dumps within one second (a timeout under a second)
            folder = folder.with_name(f"{folder.name}_{time.monotonic_ns()}")
        headline = [
            f"no progress for {idle_s:.0f} s (watchdog.timeout_s={self.cfg.timeout_s:g})",
            f"driver stage: {stage} (for {stage_s:.0f} s)",
        ]
        dump = write_stack_dump(folder, headline)
        message = (
            f"hang: no progress for {idle_s:.0f} s (watchdog.timeout_s={self.cfg.timeout_s:g}) while the driver "
            f"was at stage {stage!r}; running Ray tasks: {dump.running_tasks}; stacks of the driver and "
            f"{len(dump.processes)} processes in {folder}"
        )
        logger.error("%s", message)
        return message

    def _fail(self, message: str) -> None:
        """Interrupt the main thread, and again every `timeout_s` until it leaves the `with` block: the
        cleanup the first interrupt runs (`finally`, `with` exits) may itself wait on the hung actor."""
        with self._lock:
            if self._is_closed:
                return
            self._failure = message + "; set watchdog.on_hang=wait to keep waiting, or raise watchdog.timeout_s"
        main_ident = threading.main_thread().ident
        assert main_ident is not None, "the main thread has started"
        signal.pthread_kill(main_ident, INTERRUPT_SIGNAL)
        while not self._stop.wait(self.cfg.timeout_s):
            logger.error(
                "watchdog: the driver's cleanup has not finished %.0f s after the interrupt; interrupting it again",
                self.cfg.timeout_s,
            )
            signal.pthread_kill(main_ident, INTERRUPT_SIGNAL)
