"""SGLang's `/start_profile` and `/stop_profile` for the native engine: a torch profiler around model steps.

`StepProfiler` lives on the scheduler and is driven only from the model thread (start and stop run as
scheduler commands between steps; `step` runs after each step that did model work), so the profiler
starts, records and stops on the thread that runs the model. As in SGLang (scheduler `profiler_manager`),
a profile with `num_steps` stops itself after that many steps; otherwise it runs until `/stop_profile`.
The trace is a gzipped Chrome trace named like SGLang's: `{profile_prefix-}{profile_id}-TP-0.trace.json.gz`
in `output_dir` (profile_id defaults to the start time, as SGLang's tokenizer manager sets it).

Torch-free at import: the HTTP layer imports `ProfileRequest` without loading torch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

ACTIVITIES = ("CPU", "GPU")  # SGLang also knows MEM and RPD (memory snapshots, ROCm tracer); not here


@dataclass(slots=True, kw_only=True)
class ProfileRequest:
    """A checked `/start_profile` body (bodies.parse_profile)."""

    output_dir: str  # SGLang's default: $SGLANG_TORCH_PROFILER_DIR, else /tmp
    num_steps: int | None  # model steps to record, then stop and write the trace; None = until /stop_profile
    activities: list[str]  # subset of ACTIVITIES; GPU records CUDA kernels when CUDA is available
    with_stack: bool
    record_shapes: bool
    profile_id: str
    profile_prefix: str


class ProfileError(RuntimeError):
    """Refused start or stop; the message is SGLang's (profiler_manager.py)."""


class StepProfiler:
    """At most one torch profile at a time. Call every method on the model thread."""

    def __init__(self) -> None:
        self._profile: Any = None  # torch.profiler.profile while recording
        self._request: ProfileRequest | None = None
        self._steps = 0
        self.last_trace: Path | None = None  # the trace written by the last stop

    def start(self, request: ProfileRequest) -> None:
        import torch

        if self._profile is not None:
            raise ProfileError("Profiling is already in progress. Call /stop_profile first.")
        activities = [torch.profiler.ProfilerActivity.CPU] if "CPU" in request.activities else []
        if "GPU" in request.activities:
            if torch.cuda.is_available():
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            else:
                logger.info("profile activity GPU: no CUDA device here; recording CPU activity only")
        if not activities:  # GPU asked on a CPU-only machine
            activities = [torch.profiler.ProfilerActivity.CPU]
        profile = torch.profiler.profile(
            activities=activities, with_stack=request.with_stack, record_shapes=request.record_shapes
        )
        profile.start()
        self._profile, self._request, self._steps = profile, request, 0
        logger.info(
            "profiling starts; traces will be saved to %s (profile id %s)", request.output_dir, request.profile_id
        )

    def step(self) -> None:
        """After a model step: a `num_steps` profile that has recorded its steps stops and writes its trace."""
        if self._profile is None or self._request is None:
            return
        self._steps += 1
        if self._request.num_steps is not None and self._steps >= self._request.num_steps:
            self.stop()

    def stop(self) -> Path:
        """Stop recording and write the Chrome trace; returns its path."""
        if self._profile is None or self._request is None:
            raise ProfileError("Profiling is not in progress. Call /start_profile first.")
        profile, request = self._profile, self._request
        self._profile, self._request = None, None
        profile.stop()
        output_dir = Path(request.output_dir).expanduser()
        output_dir.mkdir(parents=True, exist_ok=True)
        prefix = f"{request.profile_prefix}-" if request.profile_prefix else ""
        path = output_dir / f"{prefix}{request.profile_id}-TP-0.trace.json.gz"
        profile.export_chrome_trace(str(path))
        self.last_trace = path
        logger.info("profiling stopped after %d steps; trace %s", self._steps, path)
        return path
