"""summary.json's eval figures: first and last of each logged eval metric (driver.first_and_last_evals)."""

from slime_rl.orchestration.driver import first_and_last_evals


def test_first_and_last_skip_records_without_the_metric():
    records = [
        {"eval/accuracy": 0.1, "eval/tool_use_rate": 0.2},
        {"rollout/reward_mean": 0.5},  # a step without eval
        {"eval/accuracy": 0.4, "eval/tool_use_rate": 0.6},
        {"eval/accuracy": 0.7, "eval/tool_use_rate": 0.9, "perf/step_time_s": 1.0},
    ]
    assert first_and_last_evals(records) == {
        "eval_accuracy_first": 0.1,
        "eval_accuracy_last": 0.7,
        "tool_use_rate_first": 0.2,
        "tool_use_rate_last": 0.9,
    }


def test_reliability_split_is_named_and_eval_accuracy_is_always_present():
    records = [
        {"eval/answerable/accuracy": 0.8, "eval/unanswerable/hallucination_rate": 0.9},
        {"eval/answerable/accuracy": 0.79, "eval/unanswerable/hallucination_rate": 0.2},
    ]
    summary = first_and_last_evals(records)
    assert summary["answerable_accuracy_first"] == 0.8 and summary["answerable_accuracy_last"] == 0.79
    assert summary["hallucination_rate_first"] == 0.9 and summary["hallucination_rate_last"] == 0.2
    assert summary["eval_accuracy_first"] is None and summary["eval_accuracy_last"] is None  # a run without eval
    assert "tool_use_rate_last" not in summary
