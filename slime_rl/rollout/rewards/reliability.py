"""The reliability reward (`rollout.reward.kind=reliability`) and the metrics of its outcomes.

Owns: classifying each response as correct, abstained or wrong; the reward of each outcome (by default
+1, 0 and -1); and the outcome metrics, split into answerable and unanswerable prompts. It does not judge
correctness itself: the inner reward (`rollout.reward.reliability.inner`, resolved by the hub) does.

Unanswerable prompts: a prompt is unanswerable when its label equals the abstain answer (case folded and
whitespace runs collapsed), e.g. a dataset row `{"prompt": "47+?=", "label": "I don't know"}`. The label
reaches every reward (rule, custom, remote) and the eval set without any dataset option, which a
metadata flag would not. A sample without a label counts as answerable (the inner reward decides it).

Abstentions: a response abstains when its extracted answer equals the abstain answer under the same
normalisation. The answer is extracted by the inner reward's own extractor: a rule's from the hub's
`ANSWER_EXTRACTORS` (`math`: the last `\\boxed{}`, else the text after "answer is", else the last line), a
custom reward's from its `answer_extractor` mark (the toy's take the first line); unmarked custom rewards and
remote ones use the `math` extractor.

| prompt       | response                              | outcome            | reward  |
|--------------|---------------------------------------|--------------------|---------|
| answerable   | abstains                              | abstained          | abstain |
| answerable   | inner reward >= min_correct_reward    | correct            | correct |
| answerable   | any other answer                      | wrong              | wrong   |
| unanswerable | abstains                              | correct, abstained | correct |
| unanswerable | any answer                            | wrong              | wrong   |

The inner reward scores only answerable prompts that were answered. Each scored sample keeps its outcome
in `reward_info` as 0/1 floats under `reliability/answerable`, `reliability/abstained` and
`reliability/correct` (plus `reliability/inner_reward` where the inner reward ran); a sample whose inner
reward failed carries none, is marked failed by `score_samples`, and is left out of the metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from slime_rl.config.rollout import ReliabilityConfig
from slime_rl.types import Sample

if TYPE_CHECKING:  # the hub imports this module to build kind=reliability
    from slime_rl.rollout.rewards.hub import RewardFn, RewardResult

ANSWERABLE = "reliability/answerable"
ABSTAINED = "reliability/abstained"
CORRECT = "reliability/correct"
INNER_REWARD = "reliability/inner_reward"


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one response to one prompt fared. On an unanswerable prompt, correct means abstained."""

    is_answerable: bool
    is_abstained: bool
    is_correct: bool

    @property
    def is_wrong(self) -> bool:
        """An answer that is not correct: a hallucination."""
        return not self.is_correct and not self.is_abstained


def normalize_abstention(text: str) -> str:
    """`text` with case folded and whitespace runs collapsed: what abstain matching compares."""
    return " ".join(text.split()).casefold()


def outcome_reward(outcome: Outcome, cfg: ReliabilityConfig) -> float:
    """The configured weight of `outcome`: `correct`, else `abstain`, else `wrong`."""
    if outcome.is_correct:
        return cfg.correct
    if outcome.is_abstained:
        return cfg.abstain
    return cfg.wrong


def outcome_of(sample: Sample) -> Outcome | None:
    """The outcome the reliability reward recorded on `sample`, or None if it recorded none."""
    info = sample.reward_info
    if CORRECT not in info:
        return None
    return Outcome(
        is_answerable=bool(info[ANSWERABLE]), is_abstained=bool(info[ABSTAINED]), is_correct=bool(info[CORRECT])
    )


def reliability_reward(inner: RewardFn, *, extract: Callable[[str], str], cfg: ReliabilityConfig) -> RewardFn:
    """Wrap the correctness reward `inner`: score outcomes with the weights of `cfg`, keep them in `reward_info`.

    `extract` pulls the final answer out of a response, to compare with `cfg.abstain_answer`.
    """
    abstain = normalize_abstention(cfg.abstain_answer)

    async def score(samples: Sequence[Sample], responses: Sequence[str]) -> list[RewardResult]:
        answerable = [s.label is None or normalize_abstention(s.label) != abstain for s in samples]
        abstained = [normalize_abstention(extract(r)) == abstain for r in responses]
        checked = [i for i in range(len(samples)) if answerable[i] and not abstained[i]]
        inner_results: list[RewardResult] = []
        if checked:
            try:
                inner_results = await inner([samples[i] for i in checked], [responses[i] for i in checked])
            except Exception as err:  # a failing inner reward fails only the samples it was scoring
                inner_results = [err] * len(checked)
        inner_by_index = dict(zip(checked, inner_results, strict=True))

        results: list[RewardResult] = []
        for i, sample in enumerate(samples):
            inner_reward = inner_by_index.get(i)
            if isinstance(inner_reward, Exception):
                results.append(inner_reward)
                continue
            if not answerable[i]:
                is_correct = abstained[i]
            else:
                is_correct = inner_reward is not None and inner_reward >= cfg.min_correct_reward
            outcome = Outcome(is_answerable=answerable[i], is_abstained=abstained[i], is_correct=is_correct)
            sample.reward_info[ANSWERABLE] = float(outcome.is_answerable)
            sample.reward_info[ABSTAINED] = float(outcome.is_abstained)
            sample.reward_info[CORRECT] = float(outcome.is_correct)
            if inner_reward is not None:
                sample.reward_info[INNER_REWARD] = inner_reward
            results.append(outcome_reward(outcome, cfg))
        return results

    return score


def reliability_metrics(outcomes: Sequence[Outcome], *, prefix: str = "eval") -> dict[str, float]:
    """Accuracy, abstention rate, hallucination rate and AA-Omniscience index, per answerable/unanswerable split.

    Over the n outcomes of a split: accuracy = correct / n; abstention_rate = abstained / n;
    hallucination_rate = wrong / (wrong + abstained), AA-Omniscience's: of the prompts the policy did not
    answer correctly, the share it answered anyway instead of abstaining (0.0 when there are none);
    omniscience_index = 100 * (correct - wrong) / n, in points from -100 to 100 like AA-Omniscience's. On
    unanswerable prompts correct = abstained, so every answer is wrong and hallucination_rate = wrong / n.
    A split without outcomes reports nothing. Keys: `{prefix}/{answerable|unanswerable}/{metric}`, plus
    `num_samples`.
    """
    metrics: dict[str, float] = {}
    for split, is_answerable in (("answerable", True), ("unanswerable", False)):
        part = [o for o in outcomes if o.is_answerable is is_answerable]
        if not part:
            continue
        n = len(part)
        num_correct = sum(o.is_correct for o in part)
        num_abstained = sum(o.is_abstained for o in part)
        num_wrong = sum(o.is_wrong for o in part)
        num_not_correct = num_wrong + num_abstained
        metrics |= {
            f"{prefix}/{split}/num_samples": float(n),
            f"{prefix}/{split}/accuracy": num_correct / n,
            f"{prefix}/{split}/abstention_rate": num_abstained / n,
            f"{prefix}/{split}/hallucination_rate": num_wrong / num_not_correct if num_not_correct else 0.0,
            f"{prefix}/{split}/omniscience_index": 100.0 * (num_correct - num_wrong) / n,
        }
    return metrics
