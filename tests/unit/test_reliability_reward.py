import asyncio
from collections.abc import Sequence

import pytest

from slime_rl.config import load_config
from slime_rl.config.rollout import ReliabilityConfig, RewardConfig
from slime_rl.errors import ConfigError
from slime_rl.rollout.evaluate import eval_metrics
from slime_rl.rollout.rewards.hub import RewardResult, make_reward_fn, score_samples
from slime_rl.rollout.rewards.math import extract_final_answer
from slime_rl.rollout.rewards.reliability import Outcome, outcome_of, reliability_metrics, reliability_reward
from slime_rl.types import Sample, Status

IDK = "I don't know"


def _samples(labels: Sequence[str | None]) -> list[Sample]:
    return [
        Sample(uid=f"g-{i}", group_id="g", index=i, prompt_ids=[1], response_ids=[5, 6],
               rollout_logprobs=[-0.1, -0.1], loss_mask=[1, 1], label=label)
        for i, label in enumerate(labels)
    ]  # fmt: skip


def _score(cfg: RewardConfig, labels: Sequence[str | None], responses: Sequence[str]) -> tuple[list[Sample], int]:
    samples = _samples(labels)
    failed = asyncio.run(score_samples(make_reward_fn(cfg), samples, responses))
    return samples, failed


TOY_ADDITION = "slime_rl.toy.rewards:addition"  # a custom reward marked with its answer extractor (first line)


def _reliability(inner: str = "custom", **weights: float) -> RewardConfig:
    path = TOY_ADDITION if inner == "custom" else None
    return RewardConfig(kind="reliability", path=path, reliability=ReliabilityConfig(inner=inner, **weights))


# Answerable (label 432): right, abstains, wrong. Unanswerable (label = the abstain answer): abstains, answers.
LABELS = ["432", "432", "432", IDK, IDK]
RESPONSES = ["432\n", "I don't know", "431", "i DON'T   know\n", "5"]


def test_reliability_reward_default_weights_are_plus_one_zero_minus_one():
    samples, failed = _score(_reliability(), LABELS, RESPONSES)
    assert failed == 0
    # correct, abstained (answerable), wrong, abstained on unanswerable = correct, answered unanswerable = wrong
    assert [s.reward for s in samples] == [1.0, 0.0, -1.0, 1.0, -1.0]


def test_reliability_reward_custom_weights_replace_the_defaults():
    samples, _ = _score(_reliability(correct=2.0, abstain=-0.25, wrong=-3.0), LABELS, RESPONSES)
    assert [s.reward for s in samples] == [2.0, -0.25, -3.0, 2.0, -3.0]


def test_reliability_reward_keeps_each_outcome_on_the_sample():
    samples, _ = _score(_reliability(), LABELS, RESPONSES)
    assert [outcome_of(s) for s in samples] == [
        Outcome(is_answerable=True, is_abstained=False, is_correct=True),
        Outcome(is_answerable=True, is_abstained=True, is_correct=False),
        Outcome(is_answerable=True, is_abstained=False, is_correct=False),
        Outcome(is_answerable=False, is_abstained=True, is_correct=True),
        Outcome(is_answerable=False, is_abstained=False, is_correct=False),
    ]
    assert samples[0].reward_info["reliability/inner_reward"] == 1.0
    assert "reliability/inner_reward" not in samples[1].reward_info  # an abstention is not checked


def test_reliability_abstention_ignores_case_and_whitespace_but_not_other_text():
    responses = ["  I   DON'T know  ", "I don't know.", "I don't know\nthe sum", "idontknow"]
    samples, _ = _score(_reliability(), ["7"] * 4, responses)
    # the toy reward's extractor takes the first line: the third abstains; a trailing "." or missing spaces do not
    assert [s.reward for s in samples] == [0.0, -1.0, 0.0, -1.0]


def test_reliability_abstention_uses_the_math_extractor_for_math():
    responses = [r"hard. \boxed{i don't know}", r"\boxed{42}", "The answer is: I don't know"]
    samples, _ = _score(_reliability("math"), ["42", "42", "42"], responses)
    assert [s.reward for s in samples] == [0.0, 1.0, 0.0]


def test_reliability_abstain_answer_is_configurable():
    samples, _ = _score(_reliability(abstain_answer="pass"), ["7", "pass", "pass"], ["PASS", "pass", "7"])
    assert [s.reward for s in samples] == [0.0, 1.0, -1.0]


def test_reliability_inner_custom_reward_uses_reward_path():
    cfg = RewardConfig(
        kind="reliability",
        path="tests.unit.rewards_fixtures:length_reward",
        reliability=ReliabilityConfig(inner="custom"),
    )
    samples, _ = _score(cfg, ["x", "x", "x"], ["a", "abc", "I don't know"])
    # length_reward gives len(response): 1 and 3 are >= min_correct_reward 1.0; the abstention is not checked
    assert [s.reward for s in samples] == [1.0, 1.0, 0.0]


def test_reliability_unmarked_custom_reward_extracts_answers_like_math():
    cfg = RewardConfig(
        kind="reliability",
        path="tests.unit.rewards_fixtures:length_reward",
        reliability=ReliabilityConfig(inner="custom"),
    )
    # the math extractor takes the last line ("the sum"): no abstention, and length 20 >= 1.0 is correct;
    # the toy reward's first-line extractor would call the same response an abstention (see above)
    samples, _ = _score(cfg, ["x"], ["I don't know\nthe sum"])
    assert [s.reward for s in samples] == [1.0]


def test_reliability_min_correct_reward_sets_the_correctness_threshold():
    cfg = RewardConfig(
        kind="reliability",
        path="tests.unit.rewards_fixtures:length_reward",
        reliability=ReliabilityConfig(inner="custom", min_correct_reward=2.0),
    )
    samples, _ = _score(cfg, ["x", "x"], ["a", "abc"])
    assert [s.reward for s in samples] == [-1.0, 1.0]


class _RecordingInner:
    """An inner reward that records what it was asked to score and can raise."""

    def __init__(self, *, raises: bool = False) -> None:
        self.seen: list[str] = []
        self.raises = raises

    async def __call__(self, samples: Sequence[Sample], responses: Sequence[str]) -> list[RewardResult]:
        self.seen += responses
        if self.raises:
            raise RuntimeError("judge down")
        return [1.0] * len(samples)


def test_reliability_inner_scores_only_answered_answerable_prompts():
    inner = _RecordingInner()
    fn = reliability_reward(inner, extract=extract_final_answer, cfg=ReliabilityConfig(inner="custom"))
    asyncio.run(score_samples(fn, _samples(LABELS), RESPONSES))
    assert inner.seen == ["432\n", "431"]


def test_reliability_inner_failure_fails_only_the_samples_it_scored():
    fn = reliability_reward(
        _RecordingInner(raises=True), extract=extract_final_answer, cfg=ReliabilityConfig(inner="custom")
    )
    samples = _samples(LABELS)
    failed = asyncio.run(score_samples(fn, samples, RESPONSES))
    assert failed == 2
    assert [s.status for s in samples] == [Status.FAILED, Status.PENDING, Status.FAILED, Status.PENDING, Status.PENDING]
    assert [s.reward for s in samples] == [0.0, 0.0, 0.0, 1.0, -1.0]
    assert outcome_of(samples[0]) is None


def _outcomes(answerable: bool, *, correct: int, abstained: int, wrong: int) -> list[Outcome]:
    # on an unanswerable prompt an abstention is the correct answer
    abstain = Outcome(is_answerable=answerable, is_abstained=True, is_correct=not answerable)
    return (
        [Outcome(is_answerable=answerable, is_abstained=False, is_correct=True)] * correct
        + [abstain] * abstained
        + [Outcome(is_answerable=answerable, is_abstained=False, is_correct=False)] * wrong
    )


def test_reliability_metrics_hand_worked_split():
    outcomes = _outcomes(True, correct=3, abstained=1, wrong=1) + _outcomes(False, correct=0, abstained=1, wrong=3)
    assert reliability_metrics(outcomes) == pytest.approx(
        {
            # answerable: n=5, 3 correct, 1 abstained, 1 wrong
            "eval/answerable/num_samples": 5.0,
            "eval/answerable/accuracy": 0.6,  # 3/5
            "eval/answerable/abstention_rate": 0.2,  # 1/5
            "eval/answerable/hallucination_rate": 0.5,  # 1 wrong / (1 wrong + 1 abstained)
            "eval/answerable/omniscience_index": 40.0,  # 100 * (3 - 1) / 5
            # unanswerable: n=4, 1 abstained (= correct), 3 answered, all wrong
            "eval/unanswerable/num_samples": 4.0,
            "eval/unanswerable/accuracy": 0.25,  # 1/4
            "eval/unanswerable/abstention_rate": 0.25,  # 1/4
            "eval/unanswerable/hallucination_rate": 0.75,  # 3 wrong / (3 wrong + 1 abstained)
            "eval/unanswerable/omniscience_index": -50.0,  # 100 * (1 - 3) / 4
        }
    )


def test_reliability_metrics_all_abstained_has_zero_hallucination_and_empty_split_is_omitted():
    metrics = reliability_metrics(_outcomes(True, correct=0, abstained=2, wrong=0), prefix="rollout")
    assert metrics == {
        "rollout/answerable/num_samples": 2.0,
        "rollout/answerable/accuracy": 0.0,
        "rollout/answerable/abstention_rate": 1.0,
        "rollout/answerable/hallucination_rate": 0.0,  # 0 wrong / (0 wrong + 2 abstained)
        "rollout/answerable/omniscience_index": 0.0,  # 100 * (0 - 0) / 2
    }


def test_reliability_metrics_all_correct_has_zero_hallucination():
    metrics = reliability_metrics(_outcomes(False, correct=0, abstained=3, wrong=0))
    assert metrics["eval/unanswerable/hallucination_rate"] == 0.0  # 0 wrong / (0 wrong + 3 abstained)
    metrics = reliability_metrics(_outcomes(True, correct=2, abstained=0, wrong=0))
    assert metrics["eval/answerable/hallucination_rate"] == 0.0  # nothing missed: defined as 0


def test_eval_metrics_add_reliability_keys_beside_the_existing_ones():
    samples, failed = _score(_reliability(), LABELS, RESPONSES)
    metrics = eval_metrics(samples, num_failed=failed, success_threshold=1.0)
    assert metrics["eval/accuracy"] == pytest.approx(0.4)  # rewards [1, 0, -1, 1, -1]: two >= 1.0
    assert metrics["eval/reward_mean"] == pytest.approx(0.0)  # (1 + 0 - 1 + 1 - 1) / 5
    assert metrics["eval/answerable/accuracy"] == pytest.approx(1 / 3)
    assert metrics["eval/answerable/hallucination_rate"] == pytest.approx(0.5)  # 1 wrong / (1 wrong + 1 abstained)
    assert metrics["eval/unanswerable/omniscience_index"] == pytest.approx(0.0)  # 100 * (1 - 1) / 2


def test_eval_metrics_without_reliability_reward_have_no_split_keys():
    samples, failed = _score(RewardConfig(kind="custom", path=TOY_ADDITION), ["432", "432"], ["432", "1"])
    metrics = eval_metrics(samples, num_failed=failed, success_threshold=1.0)
    assert set(metrics) == {"eval/accuracy", "eval/reward_mean", "eval/response_len_mean", "eval/reward_failed"}


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (dict(kind="reliability"), "rollout.reward.kind=reliability needs rollout.reward.reliability.inner="),
        (dict(kind="reliability", inner="reliability"), "rollout.reward.reliability.inner=reliability cannot wrap"),
        (dict(kind="math", inner="math"), "rollout.reward.reliability.inner='math' is set but rollout.reward.kind="),
        (dict(kind="reliability", inner="custom"), "reliability.inner=custom needs rollout.reward.path="),
        (dict(kind="reliability", inner="remote"), "reliability.inner=remote needs rollout.reward.url="),
        (dict(kind="reliability", inner="math", abstain_answer=" "), "rollout.reward.reliability.abstain_answer"),
        (dict(kind="reliability", inner="math", abstain=-2.0), r"wrong <= abstain <= correct.*abstain=-2.0"),
        (dict(kind="reliability", inner="math", correct=-1.0, abstain=-1.0), "wrong < correct"),
    ],
)
def test_reliability_config_errors_name_the_key(cfg, message):
    kind = cfg.pop("kind")
    with pytest.raises(ConfigError, match=message):
        RewardConfig(kind=kind, reliability=ReliabilityConfig(**cfg))


def test_reliability_unknown_inner_lists_the_choices():
    with pytest.raises(ConfigError, match=r"reliability.inner='nope' is unknown; choose one of \['custom', 'math'"):
        make_reward_fn(_reliability("nope"))


def test_reliability_config_overrides_reach_the_typed_config():
    overrides = ["rollout.reward.kind=reliability", "rollout.reward.reliability.inner=math"]
    cfg = load_config(
        [*overrides, "rollout.reward.reliability.wrong=-2", "rollout.reward.reliability.abstain_answer=pass"]
    )
    assert cfg.rollout.reward.reliability == ReliabilityConfig(inner="math", abstain_answer="pass", wrong=-2.0)
