"""The agentic toys of the README through the real driver (Ray, Redis, router, native engine, Megatron
trainer): `experiment=toy_tool` learns to use the calculator, `experiment=toy_abstain` learns to abstain.

Thresholds sit well inside the measured runs (README "Agentic toys"): toy_tool went from 0.4% to 85% held-out
accuracy by step 30 and used the tool on every eval prompt; toy_abstain's figures are in the README.
"""

import json

import pytest

from slime_rl.config import load_config
from slime_rl.orchestration.driver import run_training

pytestmark = pytest.mark.slow


def _summary(run_dir) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def test_toy_tool_learns_to_call_the_calculator(tmp_path):
    run_training(
        load_config(["experiment=toy_tool", f"output_dir={tmp_path}", "mode.num_steps=20", "eval.interval=10"])
    )
    summary = _summary(tmp_path / "toy_tool")
    assert summary["eval_accuracy_first"] < 0.1, summary  # the SFT policy mostly guesses products
    assert summary["eval_accuracy_last"] >= summary["eval_accuracy_first"] + 0.3, summary
    assert summary["tool_use_rate_last"] > 0.8, summary


def test_toy_abstain_cuts_made_up_answers_and_keeps_the_sums(tmp_path):
    run_training(load_config(["experiment=toy_abstain", f"output_dir={tmp_path}"]))
    summary = _summary(tmp_path / "toy_abstain")
    assert summary["hallucination_rate_last"] <= 0.5 * summary["hallucination_rate_first"], summary
    assert summary["answerable_accuracy_last"] >= summary["answerable_accuracy_first"] - 0.02, summary
