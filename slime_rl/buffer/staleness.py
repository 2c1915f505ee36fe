"""The one staleness rule of slime-rl (STYLE.md rule 11): how far a group may lag the trainer's weights."""

from __future__ import annotations

from slime_rl.types import Group, GroupSummary


def is_fresh(group: Group | GroupSummary, trainer_version: int, max_staleness: int | None) -> bool:
    """True if the group's oldest token lags `trainer_version` by at most `max_staleness` versions.

    The oldest token decides (`Group.oldest_version`): a partial rollout resumed under new weights is as
    stale as its first span. `max_staleness=None` keeps every group.
    """
    if max_staleness is None:
        return True
    return trainer_version - group.oldest_version <= max_staleness
