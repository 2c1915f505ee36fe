"""The built-in multi-turn hook against a scripted engine: turns, tool results under mask 0, limits, metadata,
resume after an abort mid-turn (APRIL) and weight versions kept per turn across rounds (fully async)."""

from __future__ import annotations

import asyncio

import numpy as np

from slime_rl.rollout.generate import restart_sample
from slime_rl.rollout.hook import contract_errors
from slime_rl.rollout.multi_turn import turn_metrics
from slime_rl.rollout.streaming import StreamingRollout
from slime_rl.types import Sample, Status
from tests.unit.manager_fakes import MemoryBuffer, make_manager
from tests.unit.multi_turn_fakes import CODEC, LOGPROB, Reply, ScriptedEngine, generation, run_round, sample, text

CALL = "<tool>calculator: 6*7</tool>"
RESULT = "<result>42</result>"
ANSWER = "<answer>42</answer>"


def _policy_text(s: Sample) -> str:
    return text(s.response_ids[s.loss_mask == 1])


def test_multi_turn_tool_call_then_answer_masks_the_result_and_records_turns():
    engine = ScriptedEngine([Reply(CALL + "junk after the tag"), Reply(ANSWER)])

    s = asyncio.run(run_round(engine, sample(), generation()))

    assert text(s.response_ids) == CALL + RESULT + ANSWER  # the tokens after </tool> were dropped
    c, r, a = len(CALL), len(RESULT), len(ANSWER)
    assert s.loss_mask.tolist() == [1] * c + [0] * r + [1] * a
    assert s.rollout_logprobs.tolist() == [LOGPROB] * c + [0.0] * r + [LOGPROB] * a
    assert s.weight_spans == [(0, 0, c), (0, c + r, c + r + a)]
    assert s.status is Status.COMPLETED
    assert s.metadata["stop_reason"] == "answer" and s.metadata["final_answer"] == "42"
    assert s.metadata["turns"] == [
        {"policy": [0, c], "action": "tool", "tool": "calculator", "error": None, "result": [c, c + r]},
        {"policy": [c + r, c + r + a], "action": "answer", "tool": None, "error": None, "result": None},
    ]
    # The second turn continues from prompt + call + result; every request stops at '>' (closing tags' last token).
    assert engine.requests[1].input_ids == sample().prompt_ids.tolist() + CODEC.encode(CALL + RESULT)
    assert all(r.sampling_params.stop_token_ids == CODEC.encode(">") for r in engine.requests)
    assert contract_errors(s, 200) == []


def test_multi_turn_stop_token_that_closes_no_tag_continues_the_turn():
    engine = ScriptedEngine([Reply("<tool>"), Reply("calculator: 2+3</tool>"), Reply("<answer>5</answer>")])

    s = asyncio.run(run_round(engine, sample(), generation()))

    assert len(engine.requests) == 3
    assert engine.requests[1].input_ids == sample().prompt_ids.tolist() + CODEC.encode("<tool>")
    assert text(s.response_ids) == "<tool>calculator: 2+3</tool><result>5</result><answer>5</answer>"
    assert s.weight_spans[0] == (0, 0, len("<tool>calculator: 2+3</tool>"))  # one span for the whole turn


def test_multi_turn_tool_errors_are_shown_to_the_policy_and_recorded():
    engine = ScriptedEngine([Reply("<tool>calculator: 6*</tool>"), Reply("<tool>search: x</tool>"), Reply(ANSWER)])

    s = asyncio.run(run_round(engine, sample(), generation(), max_new_tokens=1000))

    turns = s.metadata["turns"]
    assert [t["error"] for t in turns] == ["bad_input", "unknown_tool", None]
    assert "<result>error (bad_input): " in text(s.response_ids)
    assert turn_metrics([s]) == {
        "rollout/tool_use_rate": 1.0,
        "rollout/tool_calls_mean": 2.0,
        "rollout/tool_error_rate": 1.0,
        "rollout/turns_mean": 3.0,
    }


def test_multi_turn_stops_at_max_turns_without_running_the_last_call():
    engine = ScriptedEngine([Reply(CALL), Reply(CALL)])

    s = asyncio.run(run_round(engine, sample(), generation(max_turns=2)))

    assert s.status is Status.TRUNCATED and s.metadata["stop_reason"] == "max_turns"
    assert text(s.response_ids) == CALL + RESULT + CALL
    assert [t["result"] is not None for t in s.metadata["turns"]] == [True, False]


def test_multi_turn_stops_at_max_tool_calls():
    engine = ScriptedEngine([Reply(CALL), Reply(CALL)])

    s = asyncio.run(run_round(engine, sample(), generation(max_turns=8, max_tool_calls=1)))

    assert s.status is Status.TRUNCATED and s.metadata["stop_reason"] == "max_tool_calls"
    assert len(engine.requests) == 2


def test_multi_turn_tool_result_over_the_budget_is_cut_and_the_sample_truncated():
    budget = len(CALL) + 5
    engine = ScriptedEngine([Reply(CALL)])

    s = asyncio.run(run_round(engine, sample(), generation(), max_new_tokens=budget))

    assert s.status is Status.TRUNCATED and len(s.response_ids) == budget
    assert text(s.response_ids) == CALL + RESULT[:5]
    assert contract_errors(s, budget) == []


def test_multi_turn_eos_without_a_tag_completes_the_sample():
    engine = ScriptedEngine([Reply("just text")])

    s = asyncio.run(run_round(engine, sample(), generation()))

    assert s.status is Status.COMPLETED and s.metadata["stop_reason"] == "eos"
    assert s.metadata["turns"][0]["action"] == "text" and s.loss_mask.tolist() == [1] * (len("just text") + 1)


async def _abort_once_requested(engine: ScriptedEngine, stop: asyncio.Event, num_requests: int) -> None:
    while len(engine.requests) < num_requests:
        await asyncio.sleep(0.001)
    stop.set()
    await engine.abort_all()


def test_multi_turn_aborted_mid_turn_resumes_that_turn_from_its_tokens_under_the_new_version():
    engine = ScriptedEngine([Reply(CALL), Reply("<answer>4", hold=True)])

    async def first_round() -> Sample:
        stop = asyncio.Event()
        s, _ = await asyncio.gather(
            run_round(engine, sample(), generation(), version=0, stop=stop), _abort_once_requested(engine, stop, 2)
        )
        return s

    s = asyncio.run(first_round())
    c, r = len(CALL), len(RESULT)
    assert s.status is Status.ABORTED and text(s.response_ids) == CALL + RESULT + "<answer>4"
    assert len(s.metadata["turns"]) == 1  # the aborted turn is unfinished: no record yet

    engine.replies, engine.weight_version = [Reply("2</answer>")], "1"
    asyncio.run(run_round(engine, s, generation(), version=1))

    assert engine.requests[-1].input_ids == sample().prompt_ids.tolist() + CODEC.encode(CALL + RESULT + "<answer>4")
    assert s.status is Status.COMPLETED and s.metadata["final_answer"] == "42"
    assert s.weight_spans == [(0, 0, c), (0, c + r, c + r + 9), (1, c + r + 9, c + r + len(ANSWER))]
    assert s.metadata["turns"][1]["policy"] == [c + r, c + r + len(ANSWER)]
    assert contract_errors(s, 200) == []


def test_multi_turn_aborted_between_a_call_and_its_tool_runs_the_tool_on_resume():
    engine = ScriptedEngine([Reply(CALL, hold=True)])

    async def first_round() -> Sample:
        stop = asyncio.Event()
        s, _ = await asyncio.gather(
            run_round(engine, sample(), generation(), stop=stop), _abort_once_requested(engine, stop, 1)
        )
        return s

    s = asyncio.run(first_round())
    assert s.status is Status.ABORTED and text(s.response_ids) == CALL  # the call is in, its result not yet

    engine.replies = [Reply(ANSWER)]
    asyncio.run(run_round(engine, s, generation(), version=1))

    assert len(engine.requests) == 2  # the tool ran without a request for the finished turn
    assert text(s.response_ids) == CALL + RESULT + ANSWER and s.status is Status.COMPLETED


def test_streaming_pause_mid_turn_keeps_each_turns_weight_version():
    buffer = MemoryBuffer()
    buffer.add_prompts(["g"], group_size=1)
    engine = ScriptedEngine([Reply(CALL), Reply("<answer>4", hold=True)])
    manager = make_manager(buffer, engine, rollout_batch_size=1, n_samples_per_prompt=1, max_new_tokens=200)
    manager.generation = generation()

    async def go() -> None:
        stream = StreamingRollout(manager, max_staleness=1, version=0)
        task = asyncio.create_task(stream.run())
        while len(engine.requests) < 2:
            await asyncio.sleep(0.001)
        await stream.pause()
        engine.replies, engine.weight_version = [Reply("2</answer>")], "1"
        stream.resume(1)
        while not buffer.samples:
            await asyncio.sleep(0.001)
        await stream.stop()
        await task

    asyncio.run(go())

    ((_, group),) = buffer.samples
    s = group.samples[0]
    c, r = len(CALL), len(RESULT)
    assert text(s.response_ids) == CALL + RESULT + ANSWER
    assert s.weight_spans == [(0, 0, c), (0, c + r, c + r + 9), (1, c + r + 9, c + r + len(ANSWER))]
    assert buffer.unaccounted() == 0


def test_turn_metrics_average_over_all_samples_including_single_turn_ones():
    two_calls = sample()
    two_calls.metadata["turns"] = [
        {"policy": [0, 1], "action": "tool", "tool": "calculator", "error": None, "result": [1, 2]},
        {"policy": [2, 3], "action": "tool", "tool": "calculator", "error": "bad_input", "result": [3, 4]},
        {"policy": [4, 5], "action": "answer", "tool": None, "error": None, "result": None},
    ]
    answered = sample()
    answered.metadata["turns"] = [{"policy": [0, 1], "action": "answer", "tool": None, "error": None, "result": None}]
    single_turn = sample()

    metrics = turn_metrics([two_calls, answered, single_turn])

    assert metrics == {
        "rollout/tool_use_rate": 1 / 3,
        "rollout/tool_calls_mean": 2 / 3,
        "rollout/tool_error_rate": 1 / 2,
        "rollout/turns_mean": 4 / 3,
    }


def test_restart_sample_clears_the_turns_with_the_tokens():
    s = sample()
    s.append_tokens(np.array(CODEC.encode(CALL)), np.full(len(CALL), -1.0), version=0)
    s.metadata.update(turns=[{"policy": [0, len(CALL)]}], stop_reason="max_turns", hook={"phase": "review"})
    s.metadata["source"] = "dataset row field"

    restart_sample(s, version=3)

    assert len(s.response_ids) == 0 and s.metadata == {"source": "dataset row field"}
