import json

from slime_rl.profiling.lifecycles import Interval, LoadSample, Profile, ProfiledStep, RequestLifecycle
from slime_rl.profiling.report import render_report
from slime_rl.profiling.summary import summarize
from slime_rl.profiling.sweep import compare, write_comparison
from slime_rl.profiling.trace import REQUESTS_PID, build_trace


def request(rid: str, sent: float, answered: float, finish: str = "stop", is_resume: bool = False):
    return RequestLifecycle(
        rid=rid,
        sent_s=sent,
        answered_s=answered,
        prompt_tokens=4,
        completion_tokens=10,
        finish=finish,
        weight_version="0",
        engine_e2e_s=answered - sent - 0.5,
        engine_queue_s=None,
        engine_ttft_s=None,
        is_resume=is_resume,
    )


def small_profile() -> Profile:
    # Step 0 [100, 104): a (100..103, aborted) and b (100..102) overlap, c (102.5..103.5) reuses b's slot.
    # Step 1 [105, 107): a resumes.
    steps = [
        ProfiledStep(
            index=0,
            start_s=100.0,
            end_s=104.0,
            requests=[request("a", 100.0, 103.0, "abort"), request("b", 100.0, 102.0), request("c", 102.5, 103.5)],
            intervals=[Interval("abort_wait", 103.0, 103.8), Interval("reward", 103.8, 104.0)],
            metrics={"rollout/samples": 2.0, "rollout/response_tokens": 20.0},
        ),
        ProfiledStep(
            index=1,
            start_s=105.0,
            end_s=107.0,
            requests=[request("a", 105.0, 106.0, is_resume=True)],
            intervals=[],
            metrics={"rollout/samples": 1.0, "rollout/response_tokens": 20.0},
        ),
    ]
    loads = [LoadSample(0, 100.0, 2, 0), LoadSample(0, 103.0, 0, 0), LoadSample(0, 105.0, 1, 0)]
    return Profile(
        engine_urls=["http://127.0.0.1:1"],
        steps=steps,
        loads=loads,
        weight_updates=[Interval("weight_update", 104.2, 104.7)],
        load_poll_interval_s=1.0,
    )


def test_build_trace_packs_requests_into_slots_and_marks_resumes():
    events = build_trace(small_profile())["traceEvents"]
    lifecycles = [
        e
        for e in events
        if e["ph"] == "X" and e["pid"] == REQUESTS_PID and e["name"] not in ("queued", "prefill", "decode")
    ]
    slots = {e["args"]["rid"] + e["name"]: e["tid"] for e in lifecycles}
    assert slots == {"aabort": 1, "bstop": 2, "cstop": 2, "aresume:stop": 1}
    a = next(e for e in lifecycles if e["name"] == "abort")
    assert (a["ts"], a["dur"]) == (0.0, 3e6)  # microseconds from the first step's start
    queued = next(e for e in events if e["name"] == "queued" and e["tid"] == 1)
    assert queued["dur"] == 5e5  # 0.5 s outside the engine
    assert any(e["name"] == "weight update" and e["dur"] == 5e5 for e in events)
    assert any(e["name"] == "idle" and e["ts"] == 3e6 and e["dur"] == 2e6 for e in events)


def test_summarize_counts_throughput_over_step_time():
    summary = summarize(small_profile(), tail_fraction=0.5, finished_per_engine=[4], settings={})
    tp = summary["throughput"]
    assert tp["step_time_total_s"] == 6.0
    assert tp["samples_per_s"] == 0.5  # 3 samples / 6 s
    assert tp["generated_tokens_per_s"] == 40 / 6
    assert (tp["aborted_requests"], tp["resumed_requests"]) == (1.0, 1.0)
    assert summary["response_tokens_per_sample"]["p50"] == 10.0  # a: 10 + 10, b: 10, c: 10
    assert summary["attribution"]["total"]["weight_update_s"] == 0.5
    json.dumps(summary)  # plain JSON


def test_render_report_is_self_contained(tmp_path):
    profile = small_profile()
    summary = summarize(profile, tail_fraction=0.5, finished_per_engine=[4], settings={"overrides": ["x=1"]})
    page = render_report(profile, summary, "rollout:\n  use_april: true\n", "t")
    assert page.count('src="data:image/png;base64,') == 5
    assert "<script" not in page and 'src="http' not in page
    assert "use_april: true" in page


def test_write_comparison_reads_each_run_dir(tmp_path):
    profile = small_profile()
    for name, overrides in (("a", ["rollout=april"]), ("b", ["rollout=default"])):
        (tmp_path / name).mkdir()
        summary = summarize(profile, tail_fraction=0.5, finished_per_engine=[4], settings={"overrides": overrides})
        (tmp_path / name / "profile.json").write_text(json.dumps(summary))
    report = write_comparison([tmp_path / "a", tmp_path / "b"], tmp_path / "sweep")
    rows = compare([tmp_path / "a", tmp_path / "b"])["runs"]
    assert [r["settings"]["overrides"] for r in rows] == [["rollout=april"], ["rollout=default"]]
    assert rows[0]["samples_per_s"] == 0.5
    assert "rollout=april" in report.read_text()
    assert json.loads((tmp_path / "sweep" / "sweep.json").read_text())["runs"][1]["run_dir"].endswith("b")
