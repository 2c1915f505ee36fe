"""The toy tasks' rewards, used through the public reward hook: `rollout.reward.kind=custom` with
`rollout.reward.path=slime_rl.toy.rewards:addition` (or `:reversal`, `:multiplication`); the toy presets set both.

1.0 for an exact answer on the first line (`tasks.is_correct`), else 0.0. Each is marked with its answer
extractor (the first line), which `rollout.reward.kind=reliability` with `inner=custom` uses to spot
abstentions.
"""

from __future__ import annotations

from slime_rl.rollout.rewards.hub import answer_extractor
from slime_rl.toy.tasks import extract_answer, is_correct
from slime_rl.types import Sample


@answer_extractor(extract_answer)
def addition(sample: Sample, response: str) -> float:
    """1.0 if the first line of `response` is the sum (as an integer: "0432" counts for 432), else 0.0."""
    return float(sample.label is not None and is_correct("addition", response, sample.label))


@answer_extractor(extract_answer)
def reversal(sample: Sample, response: str) -> float:
    """1.0 if the first line of `response` is the reversed word exactly, else 0.0."""
    return float(sample.label is not None and is_correct("reversal", response, sample.label))


@answer_extractor(extract_answer)
def multiplication(sample: Sample, response: str) -> float:
    """1.0 if the first line of `response` is the product (as an integer), else 0.0."""
    return float(sample.label is not None and is_correct("multiplication", response, sample.label))
