"""The toy run still learns with APRIL and dynamic sampling on (`rollout=april`), through the real driver."""

import json

import pytest

from slime_rl.config import load_config
from slime_rl.config.rollout import groups_in_flight
from slime_rl.observability.metrics import read_metrics
from slime_rl.orchestration.driver import run_training

pytestmark = pytest.mark.slow


def test_toy_learns_with_april_partial_rollouts_and_dynamic_sampling(tmp_path):
    cfg = load_config(["experiment=toy", "rollout=april", f"output_dir={tmp_path}", "mode.num_steps=16"])
    # The preset over-provisions relative to whatever batch size the experiment sets.
    assert groups_in_flight(cfg.rollout) == 2 * cfg.rollout.rollout_batch_size
    run_training(cfg)
    run_dir = tmp_path / "toy"
    steps = [r for r in read_metrics(run_dir / "metrics.jsonl") if r.get("perf/step_time_s") is not None]
    assert [r["step"] for r in steps] == list(range(1, 17))
    assert all(r["buffer/unaccounted"] == 0 for r in steps)
    assert steps[-1]["buffer/trained"] == 16 * cfg.rollout.rollout_batch_size
    # APRIL engaged: groups were aborted and recycled, partials resumed under newer weights, the filter dropped.
    assert steps[-1]["buffer/recycled"] > 0
    assert sum(r["rollout/partial_resumed"] for r in steps) > 0
    assert max(r["rollout/off_policy_token_frac"] for r in steps) > 0
    assert steps[-1]["buffer/dropped_filter"] > 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["eval_accuracy_last"] > summary["eval_accuracy_first"] + 0.1, summary
