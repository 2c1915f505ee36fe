"""What rewards read for multi-turn samples (`reward_text`: the final answer, not the tool transcript), in the
manager's scoring and in the held-out eval, which runs the run's generate hook greedily and reports tool use."""

from __future__ import annotations

import asyncio

import pytest

from slime_rl.buffer.codec import encode_group
from slime_rl.config.rollout import RewardConfig
from slime_rl.engines.client import EngineError
from slime_rl.engines.protocol import GenerateOutput, GenerateRequest
from slime_rl.rollout.evaluate import evaluate_greedy
from slime_rl.rollout.generate import single_turn
from slime_rl.rollout.hook import Generation
from slime_rl.rollout.multi_turn import reward_text
from slime_rl.rollout.rewards.hub import make_reward_fn
from slime_rl.types import Group, Sample, Status
from tests.unit.manager_fakes import MemoryBuffer, make_manager
from tests.unit.multi_turn_fakes import CODEC, Reply, ScriptedEngine, generation, text

CALL = "<tool>calculator: 6*7</tool>"
RESULT = "<result>42</result>"
# The `math` rule scores the last line of a response: "42" is right, the transcript
# CALL + RESULT + "<answer>42</answer>" (one line) is wrong.
MATH = make_reward_fn(RewardConfig(kind="math"))


def _labelled(group_id: str, label: str = "42") -> Sample:
    return Sample(uid=f"{group_id}-0", group_id=group_id, index=0, prompt_ids=CODEC.encode("What is 6*7?"), label=label)


def _eval(engine, samples: list[Sample], gen: Generation) -> dict[str, float]:
    return asyncio.run(
        evaluate_greedy(
            engine,
            samples,
            generation=gen,
            reward_fn=MATH,
            decode=CODEC.decode,
            max_new_tokens=200,
            version=3,
            max_concurrency=1,  # one sample at a time: the scripted replies are taken in sample order
        )
    )


def test_reward_text_is_the_final_answer_when_the_sample_has_one():
    s = _labelled("g")
    s.append_tokens(CODEC.encode(CALL), [-0.5] * len(CALL), 0)
    s.metadata["final_answer"] = "42"
    assert reward_text(s, CODEC.decode) == "42"


def test_reward_text_is_the_decoded_response_without_a_final_answer():
    s = _labelled("g")
    s.append_tokens(CODEC.encode("42"), [-0.5, -0.5], 0)
    assert reward_text(s, CODEC.decode) == "42"


def test_reward_text_of_a_multi_turn_sample_without_an_answer_is_the_policy_tokens_only():
    s = _labelled("g")
    s.append_tokens(CODEC.encode(CALL), [-0.5] * len(CALL), 0)
    s.append_observation(CODEC.encode(RESULT))  # the tool's output: not the policy's text
    s.append_tokens(CODEC.encode(" so"), [-0.5] * 3, 0)
    s.metadata["turns"] = [{"action": "tool"}, {"action": "text"}]
    assert reward_text(s, CODEC.decode) == CALL + " so"


def test_reward_text_of_an_empty_answer_is_empty_not_the_transcript():
    s = _labelled("g")
    s.append_tokens(CODEC.encode("<answer></answer>"), [-0.5] * 17, 0)
    s.metadata["final_answer"] = ""
    assert reward_text(s, CODEC.decode) == ""


def test_evaluate_greedy_multi_turn_scores_final_answers_and_reports_tool_use():
    engine = ScriptedEngine([Reply(CALL), Reply("<answer>42</answer>"), Reply("<answer>41</answer>")])
    with_tool, without = _labelled("a"), _labelled("b")

    metrics = _eval(engine, [with_tool, without], generation())

    assert text(with_tool.response_ids) == CALL + RESULT + "<answer>42</answer>"  # evaluated multi-turn
    assert [with_tool.reward, without.reward] == [1.0, 0.0]  # the transcript would have scored 0.0
    assert all(r.sampling_params.temperature == 0.0 for r in engine.requests)
    assert metrics["eval/accuracy"] == 0.5  # 1 of 2 answers is 42
    assert metrics["eval/reward_mean"] == 0.5
    assert metrics["eval/tool_use_rate"] == 0.5  # sample a called the calculator, b did not
    assert metrics["eval/tool_calls_mean"] == 0.5  # 1 call over 2 samples
    assert metrics["eval/tool_error_rate"] == 0.0
    assert metrics["eval/turns_mean"] == 1.5  # (2 + 1) / 2
    assert not any(key.startswith("rollout/") for key in metrics)


def test_evaluate_greedy_single_turn_resumes_an_aborted_sample_and_reports_no_tool_use():
    engine = ScriptedEngine([Reply("4", finish="abort"), Reply("2")])
    s = _labelled("a")

    metrics = _eval(engine, [s], Generation(hook=single_turn))

    assert engine.requests[1].input_ids == CODEC.encode("What is 6*7?") + CODEC.encode("4")
    assert s.status is Status.COMPLETED and s.reward == 1.0
    assert metrics["eval/accuracy"] == 1.0
    assert metrics["eval/tool_use_rate"] == 0.0 and metrics["eval/turns_mean"] == 0.0


class DownEngine:
    async def generate(self, request: GenerateRequest) -> GenerateOutput:
        raise EngineError("connection refused")


def test_evaluate_greedy_raises_when_the_engines_never_answer():
    with pytest.raises(EngineError, match="1 of 1 samples got no answer"):
        _eval(DownEngine(), [_labelled("a")], generation())


def test_manager_step_rewards_the_final_answer_not_the_transcript():
    buffer = MemoryBuffer()
    buffer.prompts.append(encode_group(Group(group_id="g", samples=[_labelled("g")])))
    engine = ScriptedEngine([Reply(CALL), Reply("<answer>42</answer>")])
    manager = make_manager(buffer, engine, rollout_batch_size=1, n_samples_per_prompt=1, reward_fn=MATH)
    manager.generation = generation()
    manager.decode = CODEC.decode

    metrics = asyncio.run(manager.generate(0))

    ((_, group),) = buffer.samples
    (s,) = group.samples
    assert text(s.response_ids) == CALL + RESULT + "<answer>42</answer>"
    assert s.reward == 1.0  # the transcript would have scored 0.0
    assert metrics["rollout/reward_mean"] == 1.0 and metrics["rollout/tool_use_rate"] == 1.0
