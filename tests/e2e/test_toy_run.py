"""The README's main job, shortened: the toy run through the real driver with Ray, Redis, the router,
the native engine and the Megatron trainer; then a resume from its checkpoint and buffer."""

import json

import pytest

from slime_rl.config import load_config
from slime_rl.observability.metrics import read_metrics
from slime_rl.orchestration.driver import run_training

pytestmark = pytest.mark.slow


def _steps(records: list[dict]) -> list[dict]:
    return [r for r in records if r.get("perf/step_time_s") is not None]


def test_toy_run_learns_keeps_the_invariant_and_resumes(tmp_path):
    overrides = ["experiment=toy", f"output_dir={tmp_path}", "eval.interval=8"]
    run_training(load_config([*overrides, "mode.num_steps=16"]))
    run_dir = tmp_path / "toy"
    steps = _steps(read_metrics(run_dir / "metrics.jsonl"))
    assert [r["step"] for r in steps] == list(range(1, 17))
    assert all(r["buffer/unaccounted"] == 0 for r in steps)
    assert steps[-1]["buffer/trained"] == 16 * 16  # 16 steps of rollout_batch_size=16 groups
    for key in ("rollout/reward_mean", "train/loss", "train/entropy", "train/logprob_diff", "perf/weight_sync_time_s"):
        assert key in steps[-1], key
    # The reward on the training task rises: the first steps against the last ones, with margin.
    first = sum(r["rollout/reward_mean"] for r in steps[:4]) / 4
    last = sum(r["rollout/reward_mean"] for r in steps[-4:]) / 4
    assert last > first + 0.05, (first, last)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["eval_accuracy_last"] > summary["eval_accuracy_first"] + 0.1, summary
    assert (run_dir / "reward_curve.png").stat().st_size > 0
    assert any((run_dir / "tensorboard").iterdir())

    # Resume: the trainer loads step 16 and the buffer (AOF in the run dir) continues its counters.
    run_training(load_config([*overrides, "mode.num_steps=18"]))
    resumed = _steps(read_metrics(run_dir / "metrics.jsonl"))[16:]
    assert [r["step"] for r in resumed] == [17, 18]
    assert resumed[-1]["buffer/trained"] == 18 * 16
    assert resumed[-1]["buffer/unaccounted"] == 0
