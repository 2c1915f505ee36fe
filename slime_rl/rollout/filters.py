"""Dynamic-sampling filters: decide whether a finished, scored group is kept for training.

A filter is `(group) -> bool` (True = keep). Built in: `nonzero_std` (DAPO: a group whose rewards all
tie carries no GRPO signal). Custom filters are resolved from `module:function` or a dotted path
`package.module.function`. The manager counts what a filter drops and keeps groups once a step's drop
budget is spent; a filter only judges one group.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from slime_rl.errors import ConfigError
from slime_rl.plugins import load_plugin
from slime_rl.types import Group, Status

GroupFilter = Callable[[Group], bool]


def keep_all(group: Group) -> bool:
    return True


def nonzero_std(group: Group) -> bool:
    """Keep groups whose scored samples' rewards differ (DAPO dynamic sampling, Yu et al. 2025).

    Failed samples have no score and do not count: a group whose only differing reward is a failure
    carries no GRPO signal.
    """
    rewards = [s.reward or 0.0 for s in group.samples if s.status is not Status.FAILED]
    return len(rewards) > 1 and float(np.std(rewards)) > 0.0


BUILTIN_FILTERS: dict[str, GroupFilter] = {"nonzero_std": nonzero_std}


def make_group_filter(name: str | None) -> GroupFilter:
    """`None` keeps every group; a built-in name, `module:function` or `package.module.function` otherwise."""
    if name is None:
        return keep_all
    if name in BUILTIN_FILTERS:
        return BUILTIN_FILTERS[name]
    if ":" not in name:  # package.module.function
        module_name, _, attr = name.rpartition(".")
        if not module_name:
            raise ConfigError(
                f"rollout.dynamic_filter={name!r} is unknown; choose one of {sorted(BUILTIN_FILTERS)}, "
                "'module:function' or 'package.module.function'"
            )
        name = f"{module_name}:{attr}"
    return load_plugin("rollout.dynamic_filter", name)
