"""User code a config key names by dotted path, `package.module:name`: rewards, filters, generate hooks, tools and
the prepare step all load through `load_plugin`, so every such key fails the same way, in one line that names the
key and what to fix."""

from __future__ import annotations

import importlib
from typing import Any

from slime_rl.errors import ConfigError


def load_plugin(key: str, path: str | None) -> Any:
    """The callable `path` names, for the config key `key` (e.g. "rollout.reward.path")."""
    module_name, sep, attr = (path or "").partition(":")
    if not (sep and module_name and attr):
        raise ConfigError(f"{key}={path!r} must look like 'package.module:function'")
    try:
        plugin = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"{key}={path!r} cannot be imported ({err}); check the module is importable") from err
    if not callable(plugin):
        raise ConfigError(f"{key}={path!r} is not a function")
    return plugin
