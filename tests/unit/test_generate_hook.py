"""The generate hook's config (`rollout.generate`, `tools`), resolution, contract checks and the example hook."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from examples.custom_generate import REVIEW, answer_then_review
from slime_rl.config import load_config
from slime_rl.config.rollout import GenerateConfig
from slime_rl.errors import ConfigError
from slime_rl.rollout.generate import single_turn
from slime_rl.rollout.hook import Generation, contract_errors, resolve_hook
from slime_rl.rollout.multi_turn import multi_turn
from slime_rl.types import Sample, Status
from tests.unit.multi_turn_fakes import CODEC, LOGPROB, Reply, ScriptedEngine, generation, run_round, sample, text


def sync_hook(ctx, sample) -> None:  # resolved by path in a test below: not async
    return None


async def broken_hook(ctx, sample: Sample) -> None:
    """Trains a token it did not generate: mask 1 without a weight span."""
    sample.append_observation(np.array([5, 6], np.int32))
    sample.loss_mask[:] = 1
    sample.status = Status.COMPLETED


def test_load_config_reads_generate_and_tools_overrides():
    cfg = load_config(
        [
            "rollout.generate.kind=multi_turn",
            "rollout.generate.max_turns=3",
            "tools.max_tool_calls=2",
            "+tools.registered.calc=calculator",
        ]
    )

    assert cfg.rollout.generate == GenerateConfig(kind="multi_turn", path=None, max_turns=3)
    assert cfg.tools.max_tool_calls == 2 and cfg.tools.registered["calc"] == "calculator"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"kind": "chat"}, "rollout.generate.kind='chat' is unknown"),
        ({"kind": "custom"}, "rollout.generate.kind=custom needs rollout.generate.path="),
        ({"path": "examples.custom_generate:answer_then_review"}, "set rollout.generate.kind=custom"),
        ({"max_turns": 0}, "rollout.generate.max_turns must be >= 1"),
    ],
)
def test_generate_config_rejects_bad_values_naming_the_key(settings, message):
    with pytest.raises(ConfigError, match=message):
        GenerateConfig(**settings)


def test_resolve_hook_gives_the_builtins_and_a_custom_path():
    assert resolve_hook(GenerateConfig()) is single_turn
    assert resolve_hook(GenerateConfig(kind="multi_turn")) is multi_turn
    path = "examples.custom_generate:answer_then_review"
    assert resolve_hook(GenerateConfig(kind="custom", path=path)) is answer_then_review


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("examples.no_such_module:fn", r"rollout.generate.path='examples.no_such_module:fn' cannot be imported"),
        ("examples.custom_generate:nothing", r"cannot be imported"),
        (f"{__name__}:sync_hook", r"is not an async function; define `async def sync_hook\(ctx: GenerateContext"),
    ],
)
def test_resolve_hook_bad_path_is_a_one_line_config_error(path, message):
    with pytest.raises(ConfigError, match=message) as err:
        resolve_hook(GenerateConfig(kind="custom", path=path))
    assert "\n" not in str(err.value)


def _policy_sample() -> Sample:
    s = sample()
    s.append_tokens(np.array([10, 11]), np.array([-0.5, -0.25]), version=2)
    s.append_observation(np.array([12]))
    s.append_tokens(np.array([13]), np.array([-1.0]), version=3)
    s.status = Status.COMPLETED
    return s


def test_contract_errors_accepts_policy_and_observation_tokens():
    assert contract_errors(_policy_sample(), max_new_tokens=4) == []


def test_contract_errors_names_each_broken_invariant():
    over_budget = _policy_sample()
    assert contract_errors(over_budget, max_new_tokens=3) == ["4 response tokens exceed max_new_tokens=3"]

    trained_observation = _policy_sample()
    trained_observation.loss_mask[2] = 1
    assert contract_errors(trained_observation, 4) == [
        "loss_mask is not 1 exactly on the tokens of the weight spans (the policy's tokens)"
    ]

    logprob_under_mask_0 = _policy_sample()
    logprob_under_mask_0.rollout_logprobs[2] = -0.1
    assert contract_errors(logprob_under_mask_0, 4) == ["rollout_logprobs are not 0.0 on tokens with loss_mask 0"]

    misaligned = _policy_sample()
    misaligned.rollout_logprobs = misaligned.rollout_logprobs[:3]
    assert "differ in length" in contract_errors(misaligned, 4)[0]


def test_a_custom_hook_that_breaks_the_contract_fails_its_sample():
    gen = Generation(hook=broken_hook, codec=CODEC, check_contract=True)

    s = asyncio.run(run_round(ScriptedEngine([]), sample(), gen))

    assert s.status is Status.FAILED and len(s.response_ids) == 0
    assert s.metadata["error"].startswith("generate hook: loss_mask is not 1 exactly")


def test_example_hook_answers_then_reviews_with_the_review_untrained():
    engine = ScriptedEngine([Reply("41"), Reply("42")])
    gen = generation(answer_then_review)

    s = asyncio.run(run_round(engine, sample(), gen, max_new_tokens=64))

    # Each reply ends at EOS (decoded away); the review message sits between the two turns with mask 0.
    assert text(s.response_ids) == "41" + REVIEW + "42"
    assert s.loss_mask.tolist() == [1, 1, 1] + [0] * len(REVIEW) + [1, 1, 1]
    assert s.rollout_logprobs[s.loss_mask == 1].tolist() == [LOGPROB] * 6
    assert engine.requests[0].sampling_params.max_new_tokens == 32  # the answer gets half the budget
    assert s.status is Status.COMPLETED and contract_errors(s, 64) == []
