"""The one settle policy of the rollout side: where a group that came back from generation goes.

Both schedulers, the per-step `RolloutManager` and the fully-async `StreamingRollout`, send every group
that returns to `GroupSettler.settle`, which moves it to exactly one place and counts the move:
- unfinished (an engine failed mid-group): back to the buffer's partials, keeping its tokens, counted
  `engine_failed_groups`; more than `rollout.max_failed_groups_per_step` in one window raise `ServiceError`;
- finished after the window's target was met (it raced an APRIL abort): back to the partials, finished;
- finished and kept by the dynamic filter: published to the stream under the window's version;
- finished and rejected by the filter: held in the window's `rejected` list and counted as dropped when
  the window closes, up to `max_filter_drops(cfg)`; past that budget the group is published anyway
  (`filter_fallback_kept`), and a window with nothing left to generate publishes held groups rather than
  starve (`keep_rejected_when_starved`).
A window is one training step for the manager and one weight version for the stream. So the buffer's
counters invariant holds across aborts, failures and filtering, under either scheduler.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from slime_rl.config.rollout import RolloutConfig, max_filter_drops
from slime_rl.errors import ServiceError
from slime_rl.rollout.filters import GroupFilter
from slime_rl.types import Group


@dataclass
class StepState:
    """What one settle window (a step, or one weight version of the stream) has done so far."""

    version: int  # weight version groups are published under
    published: list[Group] = field(default_factory=list)
    rejected: list[Group] = field(default_factory=list)  # filtered out, dropped when the window closes
    stats: Counter[str] = field(default_factory=Counter)  # counted `rollout/*` events
    abort_wait_s: float = 0.0


class GroupSettler:
    """Applies the settle policy of the module docstring. `buffer` is the run's `RedisBuffer`."""

    def __init__(self, cfg: RolloutConfig, buffer, group_filter: GroupFilter) -> None:
        self.cfg = cfg
        self.buffer = buffer
        self.group_filter = group_filter

    def settle(self, group: Group, state: StepState, *, target_met: bool = False) -> None:
        """Send one returned group to the stream, the partials or the window's rejected list."""
        if not group.is_finished:  # an engine failed mid-group: keep its tokens, retry it
            self.buffer.put_partials([group])
            state.stats["recycled"] += 1
            state.stats["engine_failed_groups"] += 1
            if state.stats["engine_failed_groups"] > self.cfg.max_failed_groups_per_step:
                raise ServiceError(
                    f"{state.stats['engine_failed_groups']} groups failed on the engines under weight version "
                    f"{state.version} (rollout.max_failed_groups_per_step={self.cfg.max_failed_groups_per_step}); "
                    "their tokens are kept as partials. Check the engine logs and health."
                )
            return
        state.stats["reward_failed"] += sum(s.metadata.get("error", "").startswith("reward") for s in group.samples)
        state.stats["engine_rejected_samples"] += sum(
            s.metadata.get("error", "").startswith("engine") for s in group.samples
        )
        if target_met:
            self.buffer.put_partials([group])  # raced the abort: first in line next step
            state.stats["recycled"] += 1
            state.stats["recycled_finished"] += 1
        elif self.group_filter(group):
            self.publish(group, state)
        elif len(state.rejected) < max_filter_drops(self.cfg):
            state.rejected.append(group)
        else:  # DAPO's filter must not starve the window: past the drop budget, keep the group anyway
            self.publish(group, state)
            state.stats["filter_fallback_kept"] += 1

    def publish(self, group: Group, state: StepState) -> None:
        self.buffer.publish([group], state.version)
        state.published.append(group)

    def keep_rejected_when_starved(self, state: StepState) -> bool:
        """Nothing in flight and nothing to take: publish one held group. False when none is held."""
        if not state.rejected:
            return False
        state.stats["filter_fallback_kept"] += 1
        self.publish(state.rejected.pop(0), state)
        return True

    def close(self, state: StepState) -> None:
        """End the window: the groups the filter still holds are dropped and counted."""
        self.buffer.record_drops("filter", state.rejected)
        state.stats["dropped_filter"] += len(state.rejected)
        state.rejected.clear()
