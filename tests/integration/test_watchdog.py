"""The hang watchdog on real processes: py-spy dumps, the driver's own stacks, and a blocked main thread.

Every process a test starts is stopped by its PID (a local Ray through `ray.shutdown()`, which stops only
what this process started).
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from slime_rl.config import ClusterConfig, WatchdogConfig
from slime_rl.errors import ServiceError
from slime_rl.observability.watchdog import Watchdog

CHILD = textwrap.dedent(
    """
    import time

    def very_distinctive_sleep():
        print("ready", flush=True)
        time.sleep(120)

    very_distinctive_sleep()
    """
)


def _constant() -> int:
    return 0


def _dumps(run_dir: Path) -> list[Path]:
    """Finished hang dumps (`summary.txt` is written last), oldest first."""
    return sorted(p.parent for p in run_dir.glob("hang_*/summary.txt"))


def _wait_for_dumps(run_dir: Path, count: int, timeout_s: float) -> list[Path]:
    deadline = time.monotonic() + timeout_s
    while len(dumps := _dumps(run_dir)) < count:
        assert time.monotonic() < deadline, f"{len(dumps)} hang dumps after {timeout_s} s, expected {count}"
        time.sleep(0.05)
    return dumps


@pytest.fixture
def sleeping_child() -> Iterator[subprocess.Popen]:
    """A Python child of this process, blocked in `very_distinctive_sleep`."""
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        yield child
    finally:
        child.kill()
        child.wait()


@pytest.fixture
def short_ray_tmpdir(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A private RAY_TMPDIR, short enough for Ray's unix socket paths (107 bytes)."""
    path = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    monkeypatch.setenv("RAY_TMPDIR", path)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def blocked_in_distinctive_wait(seconds: float) -> None:
    time.sleep(seconds)


def test_watchdog_fail_interrupts_a_sleeping_main_thread_and_dumps_every_stack(tmp_path, sleeping_child):
    cfg = WatchdogConfig(timeout_s=2.0, check_interval_s=0.2, on_hang="fail")
    t0 = time.monotonic()
    with pytest.raises(ServiceError) as raised, Watchdog(cfg, tmp_path, _constant) as watchdog:
        watchdog.stage("waiting for the distinctive wait")
        blocked_in_distinctive_wait(60)
    elapsed_s = time.monotonic() - t0

    assert elapsed_s < 15  # a sleep of 60 s was cut short
    (dump,) = _dumps(tmp_path)
    message = str(raised.value)
    assert "\n" not in message
    assert "watchdog.timeout_s=2" in message and "'waiting for the distinctive wait'" in message
    assert str(dump) in message
    assert "blocked_in_distinctive_wait" in (dump / "driver.txt").read_text()
    (child_file,) = dump.glob(f"{sleeping_child.pid}_*.txt")
    assert "very_distinctive_sleep" in child_file.read_text()
    summary = (dump / "summary.txt").read_text()
    assert "driver stage: waiting for the distinctive wait" in summary
    assert f"{sleeping_child.pid} [" in summary


def cleanup_that_hangs_too() -> None:
    try:
        time.sleep(60)
    finally:
        time.sleep(60)


def test_watchdog_fail_interrupts_again_a_cleanup_that_hangs_too(tmp_path):
    cfg = WatchdogConfig(timeout_s=1.0, check_interval_s=0.1, on_hang="fail")
    t0 = time.monotonic()
    with pytest.raises(ServiceError, match="no progress for 1 s"), Watchdog(cfg, tmp_path, _constant):
        cleanup_that_hangs_too()
    assert time.monotonic() - t0 < 10  # two interrupts, about 1 s apart, not 120 s of sleep
    assert len(_dumps(tmp_path)) == 1


def test_watchdog_fail_interrupts_ray_get_on_a_hung_actor_and_names_its_method(tmp_path, short_ray_tmpdir):
    import ray

    from slime_rl.orchestration.cluster import ray_session

    class Sleeper:
        def ready(self) -> bool:
            return True

        def hang(self) -> None:
            time.sleep(600)

    with ray_session(ClusterConfig(num_cpus=1, object_store_memory_mb=80)):
        sleeper = ray.remote(Sleeper).options(num_cpus=0).remote()
        ray.get(sleeper.ready.remote())
        hang_ref = sleeper.hang.remote()
        cfg = WatchdogConfig(timeout_s=3.0, check_interval_s=0.2, on_hang="fail")
        t0 = time.monotonic()
        with pytest.raises(ServiceError) as raised, Watchdog(cfg, tmp_path, _constant) as watchdog:
            watchdog.stage("waiting for Sleeper.hang")
            ray.get(hang_ref)
        elapsed_s = time.monotonic() - t0

    assert elapsed_s < 60  # not the 600 s of `hang`: 3 s, about 1 s until ray.get sees the signal, the dumps
    assert "running Ray tasks: Sleeper.hang (pid " in str(raised.value)
    (dump,) = _dumps(tmp_path)
    assert "running Ray tasks: Sleeper.hang" in (dump / "summary.txt").read_text()
    (worker_file,) = dump.glob("*_ray_Sleeper.hang.txt")
    assert "hang (" in worker_file.read_text()  # py-spy's frame line: `hang (test_watchdog.py:NN)`


def test_watchdog_never_fires_while_the_probe_changes_or_beats_come(tmp_path):
    counter = itertools.count()
    token = 0
    cfg = WatchdogConfig(timeout_s=1.0, check_interval_s=0.1, on_hang="fail")
    with Watchdog(cfg, tmp_path, lambda: token) as watchdog:
        for _ in range(10):  # 3 s of progress the probe sees
            token = next(counter)
            time.sleep(0.3)
        for _ in range(10):  # then 3 s of beats only
            watchdog.beat()
            time.sleep(0.3)
    assert not list(tmp_path.glob("hang_*"))


def _raise() -> int:
    raise ConnectionError("the buffer is gone")


def _block() -> int:
    threading.Event().wait()  # a probe stuck on a hung service; its daemon thread ends with the process
    return 0


@pytest.mark.parametrize("probe", [_raise, _block], ids=["raises", "blocks"])
def test_watchdog_still_dumps_when_the_probe_raises_or_blocks(tmp_path, probe):
    cfg = WatchdogConfig(timeout_s=1.0, check_interval_s=0.2, on_hang="wait")
    with Watchdog(cfg, tmp_path, probe):
        _wait_for_dumps(tmp_path, 1, timeout_s=15)


def test_watchdog_wait_dumps_once_per_timeout_keeps_going_and_resets_on_progress(tmp_path):
    timeout_s = 1.5
    cfg = WatchdogConfig(timeout_s=timeout_s, check_interval_s=0.1, on_hang="wait")
    t0 = time.monotonic()
    with Watchdog(cfg, tmp_path, _constant) as watchdog:
        _wait_for_dumps(tmp_path, 2, timeout_s=20)
        assert time.monotonic() - t0 >= 2 * timeout_s  # the second dump waited a full period after the first
        for _ in range(10):  # 2 timeouts of beats: the hang is over, no dump
            watchdog.beat()
            last_beat = time.monotonic()
            time.sleep(0.3)
        assert len(_dumps(tmp_path)) == 2
        _wait_for_dumps(tmp_path, 3, timeout_s=20)  # silent again: a new hang, a new dump
        assert time.monotonic() - last_beat >= timeout_s
