"""`sglang_command`: typed `engine.*` keys mapped to SGLang server arguments, `engine.sglang.*` passed through;
and the `engine` config keys SGLang or no engine would ignore, rejected at load."""

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
    passed_through = argv[argv.index("--tp-size") :]
    assert passed_through == [
        "--tp-size", "2", "--mem-fraction-static", "0.7", "--enable-memory-saver",
        "--cuda-graph-bs", "1", "2", "4", "--json-model-override-args", '{"rope_scaling": null}',
    ]  # fmt: skip


def test_sglang_command_maps_typed_engine_keys_to_sglang_server_args():
    cfg = EngineConfig(
        kind="sglang",
        device="cuda",
        dtype="bfloat16",
        max_running_requests=32,
        max_context_len=4096,
        max_prefill_tokens=8192,
        weight_version="7",
    )
    assert sglang_command(cfg, "/m", "127.0.0.1", 30000)[3:] == [
        "--model-path", "/m", "--host", "127.0.0.1", "--port", "30000",
        "--max-running-requests", "32", "--context-length", "4096", "--max-prefill-tokens", "8192",
        "--dtype", "bfloat16", "--device", "cuda", "--weight-version", "7",
    ]  # fmt: skip


def test_sglang_command_rejects_keys_slime_rl_sets():
    with pytest.raises(ConfigError, match="engine.sglang.port"):
        sglang_command(EngineConfig(kind="sglang", sglang={"port": 1}), "/m", "127.0.0.1", 2)


def test_engine_config_sglang_key_duplicating_a_typed_key_names_the_typed_key():
    with pytest.raises(ConfigError, match=r"engine.sglang.context_length .*engine.max_context_len"):
        EngineConfig(kind="sglang", sglang={"context-length": 8192})


def test_engine_config_sglang_keys_with_native_engine_are_rejected():
    with pytest.raises(ConfigError, match=r"engine.sglang.*mem_fraction_static.*engine.kind=native"):
        EngineConfig(kind="native", sglang={"mem_fraction_static": 0.5})


def test_engine_config_unknown_device_is_rejected():
    with pytest.raises(ConfigError, match=r"engine.device='tpu' is unknown"):
        EngineConfig(device="tpu")
