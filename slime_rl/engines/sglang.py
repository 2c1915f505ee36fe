"""Command line of the real SGLang server (`engine.kind=sglang`, GPU clusters).

Owns the mapping from `EngineConfig` to `python -m sglang.launch_server` flags: the typed `engine.*`
keys SGLang understands become their ServerArgs (`config.engine.SGLANG_SERVER_ARGS`, e.g.
`max_context_len` -> `--context-length`), and every `engine.sglang.*` key passes through as
`--key-with-dashes value` (as slime's `--sglang-*` flags do). The config rejects `engine.sglang` keys
that repeat a typed key or the launch arguments. It does not import sglang, which is an optional extra
installed only on GPU machines.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from slime_rl.config.engine import SGLANG_SERVER_ARGS, EngineConfig


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
    """argv that starts SGLang serving `model_path` on `host:port`: typed keys, then `cfg.sglang`.

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
    for key, server_arg in SGLANG_SERVER_ARGS.items():
        argv += _flag_values(server_arg, getattr(cfg, key))
    for key, value in cfg.sglang.items():
        argv += _flag_values(key.replace("-", "_"), value)
    return argv
