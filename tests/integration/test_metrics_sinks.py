"""Metric sinks beside JSONL: an offline Weights & Biases run written by `MetricsLogger` and read back from its
`.wandb` file, and the `metrics` config keys."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pytest

from slime_rl.config.metrics import MetricsConfig
from slime_rl.config.root import load_config
from slime_rl.errors import ConfigError
from slime_rl.observability.metrics import MetricsLogger, read_metrics

RECORDS = [
    (1, {"train/loss": 1.5, "rollout/reward_mean": 0.25}),
    (2, {"train/loss": 0.75, "rollout/reward_mean": float("nan")}),
    (3, {"train/loss": float("inf"), "rollout/reward_mean": 0.5}),
]


def read_wandb_records(path: Path) -> list:
    """The protobuf records of a `run-*.wandb` file (a LevelDB-style log: 7-byte file header, then 32 KiB
    blocks of chunks with a 7-byte `<crc32, length, type>` header; types 1 full, 2 first, 3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:7])
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), "not a W&B transaction log"
    records, pos, pending = [], 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:  # a block's tail too short for a header is zero padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            break
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


@pytest.fixture
def wandb_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep W&B's settings and caches inside the test's folder and away from any account."""
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)


def test_offline_wandb_run_holds_the_logged_records(tmp_path: Path, wandb_home: None) -> None:
    pytest.importorskip("wandb")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("name: sinks\nrollout:\n  n_samples_per_prompt: 4\n")
    cfg = MetricsConfig(tensorboard=False, wandb=True, wandb_project="slime-rl-test")
    with MetricsLogger(run_dir, cfg, run_name="sinks") as metrics:
        for step, record in RECORDS:
            metrics.log(step, record)

    [run_file] = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    records = read_wandb_records(run_file)
    history = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            items = {item.key or ".".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
            history[r.history.step.num] = {k: v for k, v in items.items() if not k.startswith("_")}
    # Non-finite values are left out, as in TensorBoard (JSONL writes them as null).
    assert history == {
        1: {"train/loss": 1.5, "rollout/reward_mean": 0.25},
        2: {"train/loss": 0.75},
        3: {"rollout/reward_mean": 0.5},
    }
    [run] = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (run.display_name, run.project) == ("sinks", "slime-rl-test")
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config["rollout"] == {"n_samples_per_prompt": 4}
    assert not (run_dir / "tensorboard").exists()
    jsonl = read_metrics(run_dir / "metrics.jsonl")
    assert [r["rollout/reward_mean"] for r in jsonl] == [0.25, None, 0.5]


def test_wandb_not_installed_names_the_key_and_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wandb_home: None
) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` now raises ImportError
    with pytest.raises(ConfigError, match=r"metrics\.wandb=true.*pip install 'slime-rl\[wandb\]'"):
        MetricsLogger(tmp_path, MetricsConfig(wandb=True))


def test_metrics_config_keys() -> None:
    cfg = load_config(["metrics.tensorboard=false", "metrics.wandb=true", "metrics.wandb_project=p"])
    assert (cfg.metrics.tensorboard, cfg.metrics.wandb, cfg.metrics.wandb_mode) == (False, True, "offline")
    assert load_config().metrics == MetricsConfig()
    with pytest.raises(ConfigError, match="metrics.wandb_mode='cloud' is unknown"):
        load_config(["metrics.wandb_mode=cloud"])
