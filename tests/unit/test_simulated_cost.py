"""The simulated engine's cost model, its calibration, how its scheduler charges it, and response lengths."""

import asyncio
import json
import random
from types import SimpleNamespace

import pytest

from slime_rl.engines.native.requests import EngineRequest, RequestUpdate
from slime_rl.engines.native.scheduler import Scheduler
from slime_rl.engines.protocol import SamplingParams
from slime_rl.engines.simulated.cost import CostModel, calibrate, calibrate_files
from slime_rl.engines.simulated.lengths import ResponseLengths
from slime_rl.engines.simulated.scheduler import SimulatedScheduler, prefill_chunks


def _result(kv_len: int, steps: int, step_ms: dict[int, float], **extra) -> dict:
    return {"benchmark": "decode_step_cost", "kv_len": kv_len, "steps": steps, "step_ms": step_ms, **extra}


def test_cost_model_decode_and_prefill_follow_the_formula():
    cost = CostModel(
        decode_base_s=0.01, decode_row_s=0.001, decode_context_token_s=1e-6, prefill_token_s=1e-4, prefill_base_s=0.002
    )
    assert cost.decode_s(4, 1000) == pytest.approx(0.01 + 0.004 + 0.001)
    assert cost.decode_s(0, 0) == 0.0
    assert cost.prefill_s(50) == pytest.approx(0.002 + 0.005)
    assert cost.prefill_s(0) == 0.0


def test_cost_model_refuses_negative_coefficients():
    with pytest.raises(ValueError, match="decode_row_s must be >= 0"):
        CostModel(decode_row_s=-1.0)


def test_calibrate_one_kv_len_fits_base_and_per_row_and_keeps_prefill():
    # step = 2 ms + 0.5 ms per row, exactly
    result = _result(40, 11, {1: 2.5, 4: 4.0, 16: 10.0})
    cost = calibrate([result], CostModel(prefill_token_s=3e-5))
    assert cost.decode_base_s == pytest.approx(0.002)
    assert cost.decode_row_s == pytest.approx(0.0005)
    assert cost.decode_context_token_s == 0.0
    assert cost.prefill_token_s == 3e-5


def test_calibrate_two_kv_lens_separates_the_context_cost():
    # a = 1 ms, b = 0.1 ms, c = 2 us per context token; mean context per row = kv_len + 5 + (steps - 1) / 2 = kv + 10
    def ms(rows: int, kv: int) -> float:
        return 1.0 + 0.1 * rows + 0.002 * rows * (kv + 10)

    results = [_result(kv, 11, {r: ms(r, kv) for r in (1, 8, 32)}) for kv in (40, 400)]
    cost = calibrate(results)
    assert cost.decode_base_s == pytest.approx(0.001, rel=1e-6)
    assert cost.decode_row_s == pytest.approx(0.0001, rel=1e-6)
    assert cost.decode_context_token_s == pytest.approx(2e-6, rel=1e-6)


def test_calibrate_drops_a_negative_coefficient_and_reads_prefill():
    # Time falls slightly with rows: a negative b is dropped and the rest refitted (a = the mean).
    cost = calibrate([_result(40, 11, {1: 3.0, 2: 2.9, 4: 2.8}, prefill_ms_per_token=0.05, prefill_base_ms=1.5)])
    assert cost.decode_row_s == 0.0
    assert cost.decode_base_s == pytest.approx(0.0029)
    assert cost.prefill_token_s == pytest.approx(5e-5)
    assert cost.prefill_base_s == pytest.approx(0.0015)


def test_calibrate_reads_the_per_request_cost_and_a_list_file(tmp_path):
    results = [_result(40, 11, {1: 2.5, 16: 10.0}, request_ms=0.8), _result(400, 11, {1: 2.5, 16: 10.0})]
    assert calibrate(results).request_s == pytest.approx(0.0008)
    assert calibrate(results[1:], CostModel(request_s=0.001)).request_s == 0.001
    path = tmp_path / "cost.json"
    path.write_text(json.dumps(results))
    assert calibrate_files([str(path)]).request_s == pytest.approx(0.0008)


@pytest.mark.parametrize("budget", [16, 64, 4096])
def test_prefill_chunks_split_as_the_native_scheduler_does(budget):
    rng = random.Random(budget)
    for _ in range(50):
        widths = [rng.randint(1, 40) for _ in range(rng.randint(1, 20))]
        batch = [(i, [0] * w) for i, w in enumerate(widths)]
        native = Scheduler._prefill_chunks(SimpleNamespace(max_prefill_tokens=budget), batch)  # type: ignore[arg-type]
        assert prefill_chunks(widths, budget) == [[i for i, _ in chunk] for chunk in native]


def _timed(cost: CostModel, prompts: list[list[int]], params: SamplingParams, **scheduler) -> list[float]:
    """Seconds from submit to the final update of each request, all submitted at once."""

    async def main() -> list[float]:
        sim = SimulatedScheduler(
            cost,
            scheduler.pop("lengths", ResponseLengths(median=4, sigma=0.0)),
            max_running_requests=8,
            max_prefill_tokens=64,
            max_context_len=256,
            vocab_size=50,
            eos_token_id=7,
        )
        sim.start()
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in prompts]
        started = loop.time()
        for i, (prompt, future) in enumerate(zip(prompts, futures, strict=True)):

            def sink(update: RequestUpdate, future: asyncio.Future = future) -> None:
                if update.finish_reason is not None:
                    future.set_result(loop.time() - started)

            sim.submit(EngineRequest(rid=str(i), input_ids=prompt, params=params, sink=sink))
        seconds = await asyncio.gather(*futures)
        await sim.stop()
        return seconds

    return asyncio.run(main())


def test_scheduler_pays_one_prefill_forward_per_native_chunk():
    cost = CostModel(decode_base_s=0.0, decode_row_s=0.0, prefill_token_s=0.0, prefill_base_s=0.05)
    params = SamplingParams(max_new_tokens=1, ignore_eos=True)
    one = max(_timed(cost, [[1] * 4, [1] * 5], params))  # padded 2 x 5 <= twice the real 9: one forward
    two = max(_timed(cost, [[1] * 4, [1] * 40], params))  # padded 2 x 40 > 64: two forwards
    assert 0.05 <= one < 0.09 and 0.1 <= two < 0.14


def test_scheduler_charges_each_ending_request_to_its_step():
    cost = CostModel(decode_base_s=0.01, decode_row_s=0.0, prefill_token_s=0.0, request_s=0.04)
    # Both end in step 2 (3 tokens): two steps of 10 ms, then 2 x 40 ms for the two requests that end there.
    seconds = _timed(cost, [[1, 2], [3, 4]], SamplingParams(max_new_tokens=3, ignore_eos=True))
    assert all(0.1 <= s < 0.14 for s in seconds)


def test_an_aborted_request_resumed_with_its_partial_output_keeps_its_planned_length(tmp_path):
    trace = tmp_path / "trace.jsonl"
    trace.write_text(json.dumps({"input_ids": [5, 6], "response_lengths": [12]}) + "\n")
    lengths = ResponseLengths.from_trace_file(str(trace), median=40, sigma=0.0)

    async def main() -> tuple[RequestUpdate, RequestUpdate]:
        sim = SimulatedScheduler(
            CostModel(decode_base_s=0.01, decode_row_s=0.0, prefill_token_s=0.0),
            lengths,
            max_running_requests=2,
            max_prefill_tokens=64,
            max_context_len=64,
            vocab_size=50,
            eos_token_id=7,
        )
        sim.start()
        loop = asyncio.get_running_loop()
        done: list[asyncio.Future] = [loop.create_future(), loop.create_future()]

        def sink(future: asyncio.Future):
            return lambda update: future.set_result(update) if update.finish_reason is not None else None

        sim.submit(
            EngineRequest(rid="a", input_ids=[5, 6], params=SamplingParams(max_new_tokens=30), sink=sink(done[0]))
        )
        await asyncio.sleep(0.045)
        sim.abort("a")
        first = await done[0]
        resumed = [5, 6, *first.output_ids]
        params = SamplingParams(max_new_tokens=30 - len(first.output_ids))
        sim.submit(EngineRequest(rid="a", input_ids=resumed, params=params, sink=sink(done[1])))
        second = await done[1]
        await sim.stop()
        return first, second

    first, second = asyncio.run(main())
    assert first.finish_reason is not None and first.finish_reason.type == "abort" and 0 < len(first.output_ids) < 12
    assert second.finish_reason is not None and second.finish_reason.type == "stop"
    assert len(first.output_ids) + len(second.output_ids) == 12


def test_calibrate_refuses_other_json_and_a_single_row_count(tmp_path):
    with pytest.raises(ValueError, match="not a decode_step_cost result"):
        calibrate([{"benchmark": "engine_throughput"}])
    with pytest.raises(ValueError, match="two or more row counts"):
        calibrate([_result(40, 11, {1: 2.0})])
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="calibration file .*bad.json"):
        calibrate_files([str(path)])


def test_calibrate_files_reads_the_benchmark_output(tmp_path):
    path = tmp_path / "cost.json"
    path.write_text(json.dumps(_result(40, 11, {1: 2.5, 16: 10.0})))
    assert calibrate_files([str(path)]).decode_row_s == pytest.approx(0.0005)


def test_lengths_with_zero_sigma_are_the_median():
    lengths = ResponseLengths(median=12, sigma=0.0)
    assert {lengths.draw([1, 2], random.Random(i)) for i in range(5)} == {12}


def test_lengths_replay_a_trace_in_turn_and_fall_back_for_other_prompts(tmp_path):
    path = tmp_path / "trace.jsonl"
    path.write_text(json.dumps({"input_ids": [5, 6], "response_lengths": [3, 9]}) + "\n\n")
    lengths = ResponseLengths.from_trace_file(str(path), median=40, sigma=0.0)
    rng = random.Random(0)
    assert [lengths.draw([5, 6], rng) for _ in range(3)] == [3, 9, 3]
    assert lengths.draw([7], rng) == 40
    assert lengths.num_traced_prompts == 1


def test_lengths_trace_names_the_bad_line(tmp_path):
    path = tmp_path / "trace.jsonl"
    path.write_text(json.dumps({"input_ids": [1], "response_lengths": [0]}) + "\n")
    with pytest.raises(ValueError, match="trace.jsonl:1: not a length-trace row"):
        ResponseLengths.from_trace_file(str(path), median=4, sigma=0.0)


def test_aborted_requests_answer_one_per_request_cost_after_the_step_in_progress():
    async def main() -> list[float]:
        sim = SimulatedScheduler(
            CostModel(decode_base_s=0.03, decode_row_s=0.0, prefill_token_s=0.0, request_s=0.02),
            ResponseLengths(median=40, sigma=0.0),
            max_running_requests=4,
            max_prefill_tokens=64,
            max_context_len=256,
            vocab_size=50,
            eos_token_id=7,
        )
        sim.start()
        loop = asyncio.get_running_loop()
        answered: list[float] = []
        for rid in "abc":
            sim.submit(
                EngineRequest(
                    rid=rid, input_ids=[1, 2], params=SamplingParams(), sink=lambda u: answered.append(loop.time())
                )
            )
        await asyncio.sleep(0.01)  # inside the first 30 ms step
        aborted = loop.time()
        sim.abort(None)
        await asyncio.sleep(0.15)
        await sim.stop()
        return [t - aborted for t in answered]

    answered = asyncio.run(main())
    assert len(answered) == 3
    # The step ends ~20 ms after the abort; then one answer per 20 ms.
    assert [round(t, 2) for t in answered] == pytest.approx([0.04, 0.06, 0.08], abs=0.015)
