"""`slime-rl profile-rollout`: the rollout side alone (`run_rollout_only`), recorded and analysed.

The profiler turns on the rollout worker's capture (`RolloutWorker.start_profiling`: one record per
`/generate`, the manager's step/buffer/reward/abort intervals), polls every engine's `/v1/loads` on a thread,
and after each step collects the records. Every `profile.republish_every` steps it republishes the weights as
a version-only update (`/update_weight_version` on each serving engine: the same weights under a new
version, so partials resume under a newer version as after a real publish), either before the step
(`republish_mode=between_steps`) or halfway through it, judged by the previous step's time (`in_flight`):
`/pause_generation` in `retract` mode holds the running requests, then the update, then
`/continue_generation`, the in-place pause SGLang serves for weight updates under load. At the end it writes
`profile.json`, `trace.json` and `report.html` into the run dir (slime_rl/profiling/ does the analysis).
During the steps in `profile.sglang_profiler_steps` every engine the router serves also runs its own profiler
(SGLang's `/start_profile` before the step, `/stop_profile` after it, as slime's tools/profile_rollout.py
does), writing its trace under `{run dir}/engine_profiles/step_{k}/`. With `profile.sweep` it profiles each
setting in turn, as run `{name}_{k}`, and then compares them
(`sweep.json`, `sweep_report.html` in `{output_dir}/{name}_sweep`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import shlex
import threading
import time
from pathlib import Path

import httpx
import ray

from slime_rl.config.root import SlimeRLConfig
from slime_rl.engines.profiler import router_workers, start_engine_profilers, stop_engine_profilers
from slime_rl.orchestration.driver import RolloutSide, run_rollout_only
from slime_rl.profiling.lifecycles import (
    Interval,
    LoadSample,
    Profile,
    ProfiledStep,
    lifecycles_from_records,
    step_from_records,
)
from slime_rl.profiling.report import render_report
from slime_rl.profiling.summary import summarize
from slime_rl.profiling.trace import build_trace

logger = logging.getLogger(__name__)

PROFILE_FILES = ("profile.json", "trace.json", "report.html")


class LoadPoller:
    """A thread that polls each engine's `/v1/loads` every `interval_s` until stopped."""

    def __init__(self, urls: list[str], interval_s: float) -> None:
        self.urls = urls
        self.interval_s = interval_s
        self.samples: list[LoadSample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="profile-load-poller", daemon=True)

    def __enter__(self) -> LoadPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        with httpx.Client(timeout=max(self.interval_s * 10, 2.0)) as client:
            while not self._stop.is_set():
                for i, url in enumerate(self.urls):
                    try:
                        loads = client.get(f"{url}/v1/loads").json().get("loads") or []
                    except (httpx.HTTPError, ValueError):
                        continue  # an engine down for a moment: no sample, not a failed profile
                    self.samples.append(
                        LoadSample(
                            i,
                            time.time(),
                            sum(int(r.get("num_running_reqs", 0)) for r in loads),
                            sum(int(r.get("num_waiting_reqs", 0)) for r in loads),
                        )
                    )
                self._stop.wait(self.interval_s)


def finished_requests(urls: list[str]) -> list[int]:
    """Each engine's `num_finished_reqs` from `/get_server_info` (-1 when it does not answer or report it)."""
    out = []
    with httpx.Client(timeout=10.0) as client:
        for url in urls:
            try:
                states = client.get(f"{url}/get_server_info").json().get("internal_states") or [{}]
                out.append(int(states[0].get("num_finished_reqs", -1)))
            except (httpx.HTTPError, ValueError, TypeError):
                out.append(-1)
    return out


class ProfileObserver:
    """Records a `run_rollout_only` run (a `RolloutObserver`); `write` analyses it into the run dir."""

    def __init__(self, cfg: SlimeRLConfig) -> None:
        self.cfg = cfg
        self.version = 0
        self.steps: list[ProfiledStep] = []
        self.weight_updates: list[Interval] = []
        self.seen_rids: set[str] = set()
        self.engine_urls: list[str] = []
        self.finished_before: list[int] = []
        self.finished_after: list[int] = []
        self.poller: LoadPoller | None = None
        self.pending: threading.Thread | None = None  # an in-flight republish of the running step
        self.pending_errors: list[BaseException] = []
        self.profiled_engines: list[str] = []  # engines running their own profiler during this step

    def started(self, side: RolloutSide) -> None:
        self.engine_urls = list(side.fleet.engine_urls)
        ray.get(side.worker.start_profiling.remote())
        self.finished_before = finished_requests(self.engine_urls)
        self.poller = LoadPoller(self.engine_urls, self.cfg.profile.load_poll_interval_s).__enter__()

    def engine_profile_dir(self, step: int) -> Path:
        return (self.cfg.run_dir / "engine_profiles" / f"step_{step}").resolve()

    def before_step(self, side: RolloutSide, step: int) -> int:
        if step in self.cfg.profile.sglang_profiler_steps:  # every engine the router serves, as slime's tool does
            self.engine_profile_dir(step).mkdir(parents=True, exist_ok=True)
            urls = asyncio.run(router_workers(side.fleet.router_url))
            asyncio.run(start_engine_profilers(urls, str(self.engine_profile_dir(step))))
            self.profiled_engines = urls
        every = self.cfg.profile.republish_every
        if not (every and step and step % every == 0):
            return self.version
        urls, version = side.fleet.serving_urls(), self.version + 1
        if self.cfg.profile.republish_mode == "between_steps":
            self.republish(urls, version, pause=False)
            return self.version
        delay_s = self.steps[-1].time_s / 2 if self.steps else 0.0
        errors: list[BaseException] = []

        def republish_later() -> None:
            time.sleep(delay_s)
            try:
                self.republish(urls, version, pause=True)
            except (httpx.HTTPError, OSError) as err:  # raised on the driver's thread after the step
                errors.append(err)

        self.pending = threading.Thread(target=republish_later, name="profile-republish", daemon=True)
        self.pending_errors = errors
        self.pending.start()
        return self.version  # the step starts under the old version; the engines switch mid-step

    def republish(self, urls: list[str], version: int, *, pause: bool) -> None:
        """A version-only weight update on every serving engine (paused in place around it when `pause`), timed
        as a weight-update interval."""
        start = time.time()
        with httpx.Client(timeout=self.cfg.engine.request_timeout_s) as client:

            def post(path: str, body: dict[str, object]) -> None:
                for url in urls:
                    client.post(f"{url}{path}", json=body).raise_for_status()

            if pause:
                post("/pause_generation", {"mode": "retract"})
            try:
                post("/update_weight_version", {"new_version": str(version)})
            finally:
                if pause:
                    post("/continue_generation", {})
        self.weight_updates.append(Interval("weight_update", start, time.time()))
        self.version = version

    def after_step(self, side: RolloutSide, step: int, record: dict[str, float]) -> None:
        if self.pending is not None:  # the pause may outlast a short step: it belongs to this one
            self.pending.join()
            self.pending = None
            if self.pending_errors:
                raise self.pending_errors[0]
        if self.profiled_engines:  # each engine writes its trace as it stops
            asyncio.run(stop_engine_profilers(self.profiled_engines))
            self.profiled_engines = []
        records, timeline = ray.get(side.worker.take_profile.remote())
        requests = lifecycles_from_records(records, self.seen_rids)
        profiled = step_from_records(step, requests, timeline, record)
        profiled.intervals += [
            u for u in self.weight_updates if u.end_s > profiled.start_s and u.start_s < profiled.end_s
        ]
        self.steps.append(profiled)

    def finished(self, side: RolloutSide) -> None:
        if self.poller is not None:
            self.poller.__exit__(None, None, None)
        self.finished_after = finished_requests(self.engine_urls)

    def profile(self) -> Profile:
        return Profile(
            engine_urls=self.engine_urls,
            steps=self.steps,
            loads=self.poller.samples if self.poller else [],
            weight_updates=self.weight_updates,
            load_poll_interval_s=self.cfg.profile.load_poll_interval_s,
        )

    def write(self, run_dir: Path, settings: dict[str, object]) -> dict[str, object]:
        """Write `profile.json`, `trace.json`, `report.html`; returns the profile.json object."""
        profile = self.profile()
        finished = [
            after - before if after >= 0 and before >= 0 else -1
            for before, after in zip(self.finished_before, self.finished_after, strict=False)
        ]
        summary = summarize(
            profile, tail_fraction=self.cfg.profile.tail_fraction, finished_per_engine=finished, settings=settings
        )
        (run_dir / "profile.json").write_text(json.dumps(summary, indent=1))
        (run_dir / "trace.json").write_text(json.dumps(build_trace(profile)))
        config_path = run_dir / "config.yaml"
        config_yaml = config_path.read_text() if config_path.exists() else ""
        (run_dir / "report.html").write_text(
            render_report(profile, summary, config_yaml, f"rollout profile: {self.cfg.name}")
        )
        logger.info("profile written: %s", ", ".join(str(run_dir / f) for f in PROFILE_FILES))
        return summary


def settings_of(cfg: SlimeRLConfig, overrides: list[str]) -> dict[str, object]:
    """What a comparison shows for a run: its overrides and the knobs a sweep varies."""
    return {
        "name": cfg.name,
        "overrides": overrides,
        "use_april": cfg.rollout.use_april,
        "over_sampling_batch_size": cfg.rollout.over_sampling_batch_size,
        "rollout_batch_size": cfg.rollout.rollout_batch_size,
        "n_samples_per_prompt": cfg.rollout.n_samples_per_prompt,
        "max_new_tokens": cfg.rollout.max_new_tokens,
        "max_concurrent_requests": cfg.rollout.max_concurrent_requests,
        "num_engines": cfg.engine.num_engines,
        "engine_kind": cfg.engine.kind,
        "num_steps": cfg.profile.num_steps,
        "republish_every": cfg.profile.republish_every,
        "republish_mode": cfg.profile.republish_mode,
    }


def profile_once(cfg: SlimeRLConfig, overrides: list[str]) -> Path:
    """Profile `cfg`'s rollout side; returns its run dir (holding the three profile files)."""
    observer = ProfileObserver(cfg)
    run_rollout_only(cfg, observer=observer, num_steps=cfg.profile.num_steps)
    observer.write(cfg.run_dir, settings_of(cfg, overrides))
    return cfg.run_dir


def run_profile(cfg: SlimeRLConfig) -> Path:
    """`slime-rl profile-rollout` for one config (also each job of a Hydra `-m` sweep); returns its run dir."""
    from hydra.core.hydra_config import HydraConfig

    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    return profile_once(cfg, overrides)


def run_sweep(cfg: SlimeRLConfig, overrides: list[str]) -> tuple[list[Path], Path]:
    """`profile.sweep`: profile each setting on top of `overrides` as run `{name}_{k}`, then compare them.

    Composes each setting's config itself, so it runs outside `@hydra.main`. Returns the run dirs and the
    comparison's directory (`{output_dir}/{name}_sweep`).
    """
    from slime_rl.config import load_config
    from slime_rl.profiling.sweep import write_comparison

    base = [o for o in overrides if not o.startswith(("profile.sweep=", "name="))]
    run_dirs = []
    for k, setting in enumerate(cfg.profile.sweep):
        extra = shlex.split(setting)
        job = load_config([*base, *extra, f"name={cfg.name}_{k}", "profile.sweep=[]"])
        logger.info("sweep setting %d/%d: %s", k + 1, len(cfg.profile.sweep), " ".join(extra))
        run_dirs.append(profile_once(job, extra))
    out_dir = Path(cfg.output_dir) / f"{cfg.name}_sweep"
    write_comparison(run_dirs, out_dir)
    return run_dirs, out_dir
