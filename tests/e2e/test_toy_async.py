"""The toy run learns in both asynchronous modes, with every trained group within the staleness bound.

Fully async drops groups older than the bound when it reads them, so `staleness_max` cannot exceed it there;
what the admission rule must keep small is how many groups get that old. Admission bounds the groups
started per version, but the trainer takes groups in the order they finish, so a long one started under
version v can still finish after two updates (1 of 320 groups over 20 steps in one run). A stream that ran
ahead of the rule would lose whole batches; the test allows one batch's worth in 20 steps.
"""

import json

import pytest

from slime_rl.config import load_config
from slime_rl.observability.metrics import read_metrics
from slime_rl.orchestration.driver import run_training

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(("mode", "bound"), [("one_step_async", 1), ("fully_async", 1)])
def test_toy_learns_asynchronously_within_the_staleness_bound(tmp_path, mode, bound):
    cfg = load_config(
        ["experiment=toy", f"output_dir={tmp_path}", f"mode={mode}", f"mode.max_staleness={bound}", "mode.num_steps=20"]
    )
    run_training(cfg)
    run_dir = tmp_path / "toy"
    steps = [r for r in read_metrics(run_dir / "metrics.jsonl") if r.get("perf/step_time_s") is not None]
    assert len(steps) == 20
    assert all(r["async/staleness_max"] <= bound for r in steps)
    assert steps[-1]["buffer/dropped_stale"] <= cfg.rollout.rollout_batch_size
    assert all(r["buffer/unaccounted"] == 0 for r in steps)
    assert steps[-1]["buffer/trained"] == 20 * cfg.rollout.rollout_batch_size
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["eval_accuracy_last"] > summary["eval_accuracy_first"] + 0.1, summary
