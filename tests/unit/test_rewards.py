import asyncio

import pytest

from slime_rl.config import RewardConfig
from slime_rl.errors import ConfigError
from slime_rl.rollout.rewards.hub import make_reward_fn, score_samples
from slime_rl.rollout.rewards.math import extract_final_answer, last_boxed, math_reward, normalize_answer
from slime_rl.types import Sample, Status


def _sample(label: str | None = "42", response_len: int = 2) -> Sample:
    return Sample(
        uid="g-0", group_id="g", index=0, prompt_ids=[1, 2], response_ids=[5] * response_len,
        rollout_logprobs=[-0.1] * response_len, loss_mask=[1] * response_len, label=label,
    )  # fmt: skip


def _score(kind: str, responses: list[str], path: str | None = None, labels=None) -> tuple[list[Sample], int]:
    samples = [_sample(label) for label in (labels or ["42"] * len(responses))]
    failed = asyncio.run(score_samples(make_reward_fn(RewardConfig(kind=kind, path=path)), samples, responses))
    return samples, failed


def test_last_boxed_returns_the_last_box_with_nested_braces():
    assert last_boxed(r"first \boxed{1} then \boxed{\frac{1}{2}}") == r"\frac{1}{2}"
    assert last_boxed("no box") is None


def test_normalize_answer_removes_formatting_and_trailing_zeros():
    assert normalize_answer(" $1,000$ ") == "1000"
    assert normalize_answer("2.50") == "2.5"
    assert normalize_answer("3.0.") == "3"
    assert normalize_answer(r"\text{ 7 }") == "7"


def test_extract_final_answer_prefers_box_then_answer_is_then_last_line():
    assert extract_final_answer(r"so \boxed{5}. The answer is 6") == "5"
    assert extract_final_answer("work\nThe answer is: 6\nbye") == "6"
    assert extract_final_answer("a\nb\n7\n") == "7"


def test_math_reward_scores_equal_answers_one_and_others_zero():
    assert math_reward(r"\boxed{42.0}", "42") == 1.0
    assert math_reward(r"\boxed{41}", "42") == 0.0
    assert math_reward("42", None) == 0.0


def test_toy_reward_through_the_custom_hook_rewards_correct_addition_only():
    samples, failed = _score("custom", ["432\n", "431"], path="slime_rl.toy.rewards:addition", labels=["432", "432"])
    assert failed == 0
    assert [s.reward for s in samples] == [1.0, 0.0]


def test_custom_sync_per_sample_reward_is_called_per_sample():
    samples, _ = _score("custom", ["abc", "de"], path="tests.unit.rewards_fixtures:length_reward")
    assert [s.reward for s in samples] == [3.0, 2.0]


def test_custom_async_reward_is_awaited():
    samples, _ = _score("custom", ["42", "x"], path="tests.unit.rewards_fixtures:async_label_reward")
    assert [s.reward for s in samples] == [1.0, 0.0]


def test_custom_batched_reward_gets_the_whole_batch():
    samples, _ = _score("custom", ["a", "b", "c"], path="tests.unit.rewards_fixtures:batched_rank_reward")
    assert [s.reward for s in samples] == [0.0, 1.0, 2.0]


def test_raising_reward_marks_samples_failed_and_untrained():
    samples, failed = _score("custom", ["a", "b"], path="tests.unit.rewards_fixtures:raising_reward")
    assert failed == 2
    for sample in samples:
        assert sample.status is Status.FAILED
        assert sample.reward == 0.0
        assert sample.loss_mask.sum() == 0
        assert "ZeroDivisionError" in sample.metadata["error"]


def test_per_sample_reward_raising_on_one_sample_fails_that_sample_only():
    samples, failed = _score(
        "custom", ["a", "b", "c"], path="tests.unit.rewards_fixtures:reward_raising_on_label_7", labels=["1", "7", "2"]
    )
    assert failed == 1
    assert [s.status for s in samples] == [Status.PENDING, Status.FAILED, Status.PENDING]
    assert [s.reward for s in samples] == [1.0, 0.0, 1.0]
    assert samples[0].loss_mask.sum() == 2


def test_reward_returning_a_non_number_fails_the_sample_naming_the_value():
    samples, failed = _score("custom", ["a"], path="tests.unit.rewards_fixtures:reward_returning_text")
    assert failed == 1
    assert "'high'" in samples[0].metadata["error"]


def test_unknown_reward_kind_lists_choices():
    with pytest.raises(ConfigError, match=r"rollout.reward.kind='nope' is unknown; choose one of \['custom', 'math'"):
        make_reward_fn(RewardConfig(kind="nope"))


def test_custom_reward_with_bad_path_names_the_key():
    with pytest.raises(ConfigError, match="rollout.reward.path='nomodule_xyz:f' cannot be imported"):
        make_reward_fn(RewardConfig(kind="custom", path="nomodule_xyz:f"))
