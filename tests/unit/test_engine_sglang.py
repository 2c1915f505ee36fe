"""`sglang_command`: pass-through of `engine.sglang.*` keys to `sglang.launch_server` flags."""

from __future__ import annotations

import sys

import pytest

from slime_rl.config.engine import EngineConfig
from slime_rl.engines.sglang import sglang_command
from slime_rl.errors import ConfigError


def test_sglang_command_passes_keys_through_as_flags():
    cfg = EngineConfig(
        kind="sglang",
        sglang={
            "tp_size": 2,
            "mem_fraction_static": 0.7,
            "enable_memory_saver": True,
            "skip_server_warmup": False,
            "cuda_graph_bs": [1, 2, 4],
            "json_model_override_args": {"rope_scaling": None},
        },
    )
    argv = sglang_command(cfg, "/m", "0.0.0.0", 30000)
    assert argv[:3] == [sys.executable, "-m", "sglang.launch_server"]
    assert argv[3:] == [
        "--model-path", "/m", "--host", "0.0.0.0", "--port", "30000",
        "--tp-size", "2", "--mem-fraction-static", "0.7", "--enable-memory-saver",
        "--cuda-graph-bs", "1", "2", "4", "--json-model-override-args", '{"rope_scaling": null}',
        "--weight-version", "0",
    ]  # fmt: skip


def test_sglang_command_rejects_keys_slime_rl_sets():
    with pytest.raises(ConfigError, match="engine.sglang.port"):
        sglang_command(EngineConfig(kind="sglang", sglang={"port": 1}), "/m", "127.0.0.1", 2)
