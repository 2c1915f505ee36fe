import pytest

from slime_rl.profiling.attribution import CATEGORIES, attribute_step, engine_idle
from slime_rl.profiling.lifecycles import Interval, LoadSample, RequestLifecycle, lifecycles_from_records


def request(rid: str, sent: float, answered: float, engine_e2e: float, **kw) -> RequestLifecycle:
    return RequestLifecycle(
        rid=rid,
        sent_s=sent,
        answered_s=answered,
        prompt_tokens=4,
        completion_tokens=8,
        finish=kw.pop("finish", "stop"),
        weight_version="0",
        engine_e2e_s=engine_e2e,
        engine_queue_s=kw.pop("queue", None),
        engine_ttft_s=kw.pop("ttft", None),
    )


def test_attribute_step_splits_queue_decode_tail_reward_buffer_and_overhead():
    # A: 1 s outside the engine (8 s round trip, engine says 7 s), then decodes 1..8; B decodes 0..4.
    # Peak 2 in flight; tail_fraction 0.75 -> tail while fewer than 1.5 requests run.
    requests = [request("a", 0.0, 8.0, 7.0), request("b", 0.0, 4.0, 4.0)]
    intervals = [Interval("reward", 8.0, 9.0), Interval("buffer", 9.0, 9.5), Interval("reward", 2.0, 3.0)]
    out = attribute_step(requests, intervals, 0.0, 10.0, tail_fraction=0.75)
    # [0,1): A queued, B decoding -> 0.5 queueing, 0.5 useful; [1,4): 3 useful; [4,8): A alone -> 4 tail;
    # [8,9) reward; [9,9.5) buffer; [9.5,10) overhead. The reward during [2,3) hides behind generation.
    assert out == pytest.approx(
        {
            "weight_update_pause": 0.0,
            "useful_decode": 3.5,
            "long_tail": 4.0,
            "queueing": 0.5,
            "prefill": 0.0,
            "abort_wait": 0.0,
            "reward": 1.0,
            "buffer_io": 0.5,
            "rollout_overhead": 0.5,
        }
    )
    assert sum(out.values()) == pytest.approx(10.0)


def test_attribute_step_uses_engine_queue_and_first_token_when_reported():
    # Engine: 1 s queued, first token at 3 s -> prefill 2 s, decode 3..6; abort wait covers [5, 7).
    requests = [request("a", 0.0, 6.0, 6.0, queue=1.0, ttft=3.0)]
    out = attribute_step(requests, [Interval("abort_wait", 5.0, 7.0)], 0.0, 8.0, tail_fraction=0.5)
    assert out["queueing"] == pytest.approx(1.0)
    assert out["prefill"] == pytest.approx(2.0)
    assert out["useful_decode"] == pytest.approx(2.0)  # 3..5; the abort wait takes precedence from 5
    assert out["abort_wait"] == pytest.approx(2.0)
    assert out["rollout_overhead"] == pytest.approx(1.0)
    assert set(out) == set(CATEGORIES)


def test_attribute_step_clips_requests_to_the_window():
    out = attribute_step([request("a", -2.0, 3.0, 5.0)], [], 0.0, 4.0, tail_fraction=0.5)
    assert out["useful_decode"] == pytest.approx(3.0)
    assert out["rollout_overhead"] == pytest.approx(1.0)


def test_engine_idle_counts_idle_time_and_bubbles_per_engine():
    loads = [
        LoadSample(0, 0.0, 2, 0),
        LoadSample(0, 1.0, 0, 0),
        LoadSample(0, 2.0, 1, 0),
        LoadSample(0, 3.0, 0, 0),
        LoadSample(1, 0.0, 0, 1),
    ]
    out = engine_idle(loads, 2, 0.0, 4.0, poll_interval_s=1.0)
    assert out[0] == pytest.approx({"idle_s": 2.0, "busy_frac": 0.5, "bubbles": 2.0})
    assert out[1] == pytest.approx({"idle_s": 0.0, "busy_frac": 1.0, "bubbles": 0.0})


def test_lifecycles_from_records_marks_a_resent_rid_as_resume():
    rec = ("s1", 1.0, 2.0, 4, 3, "abort", "0", 0.9, None, None)
    seen: set[str] = set()
    first = lifecycles_from_records([rec], seen)
    again = lifecycles_from_records([("s1", 3.0, 4.0, 7, 2, "stop", "1", 0.9, None, None)], seen)
    assert (first[0].is_resume, again[0].is_resume) == (False, True)
    assert first[0].queue_s == pytest.approx(0.1)


def test_attribute_step_counts_an_in_flight_weight_update_as_a_pause():
    # One request decoding 0..6; the engines are paused for an update during [2, 3).
    out = attribute_step(
        [request("a", 0.0, 6.0, 6.0)], [Interval("weight_update", 2.0, 3.0)], 0.0, 6.0, tail_fraction=0.5
    )
    assert out["weight_update_pause"] == pytest.approx(1.0)
    assert out["useful_decode"] == pytest.approx(5.0)
