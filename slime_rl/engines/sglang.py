"""Command line of the real SGLang server (`engine.kind=sglang`, GPU clusters).

Owns the mapping from `EngineConfig` to `python -m sglang.launch_server` flags: every `engine.sglang.*`
key passes through as `--key-with-dashes value` (as slime's `--sglang-*` flags do). It does not import
sglang, which is an optional extra installed only on GPU machines.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from slime_rl.config.engine import EngineConfig
from slime_rl.errors import ConfigError

_OWNED_KEYS = ("model_path", "host", "port")  # set from the model and the process launcher


def _flag_values(key: str, value: Any) -> list[str]:
    flag = "--" + key.replace("_", "-")
    if value is None or value is False:
        return []
    if value is True:
        return [flag]
    if isinstance(value, list | tuple):
        return [flag, *(str(v) for v in value)]
    if isinstance(value, dict):
        return [flag, json.dumps(value)]
    return [flag, str(value)]


def sglang_command(cfg: EngineConfig, model_path: str, host: str, port: int) -> list[str]:
    """argv that starts SGLang serving `model_path` on `host:port` with `cfg.sglang` passed through.

    Booleans become bare flags (False drops the flag), lists become repeated values, dicts JSON.
    """
    argv = [
        sys.executable,
        "-m",
        "sglang.launch_server",
        "--model-path",
        model_path,
        "--host",
        host,
        "--port",
        str(port),
    ]
    options = dict(cfg.sglang)
    for key in options:
        if key.replace("-", "_") in _OWNED_KEYS:
            raise ConfigError(
                f"engine.sglang.{key} is set by slime-rl (model.path, engine.host and a free port); remove it"
            )
    options.setdefault("weight_version", cfg.weight_version)
    for key, value in options.items():
        argv += _flag_values(key.replace("-", "_"), value)
    return argv
