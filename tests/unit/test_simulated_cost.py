"""The simulated engine's cost model, its calibration from decode_step_cost results, and response lengths."""

import json
import random

import pytest

from slime_rl.engines.simulated.cost import CostModel, calibrate, calibrate_files
from slime_rl.engines.simulated.lengths import ResponseLengths


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
