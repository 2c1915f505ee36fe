"""`slime-rl profile-rollout` on the toy: profile.json, trace.json and report.html, the report rendered in a
headless Chromium (skipped, saying why, where Debian's `chromium` is not installed: .ci/install_chromium.sh)."""

import gzip
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from slime_rl.profiling.attribution import CATEGORIES

pytestmark = pytest.mark.slow

NUM_STEPS = 3


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("profile")
    overrides = [
        "experiment=toy",
        f"output_dir={out}",
        "name=prof",
        "sft.steps=0",
        "eval.interval=0",
        "engine.num_engines=1",
        "cluster.num_cpus=2",
        "rollout.use_april=true",  # aborts, recycled partials and resumes for the trace to show
        "rollout.rollout_batch_size=4",
        "rollout.max_new_tokens=24",
        "trainer.micro_batch_size=8",
        f"profile.num_steps={NUM_STEPS}",
        "profile.republish_every=2",
        "profile.republish_mode=in_flight",  # pause/update/continue while step 2 runs
        "profile.load_poll_interval_s=0.02",
        "profile.sglang_profiler_steps=[1]",  # the engine's own profiler around step 1
    ]
    result = subprocess.run(
        [sys.executable, "-m", "slime_rl.cli", "profile-rollout", *overrides],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out / "prof"


def test_profile_rollout_writes_profile_json_whose_attribution_sums_to_step_time(run_dir):
    profile = json.loads((run_dir / "profile.json").read_text())
    assert {"throughput", "attribution", "latency", "step_times_s"} <= set(profile)
    assert len(profile["step_times_s"]) == NUM_STEPS
    assert profile["throughput"]["samples"] == NUM_STEPS * 4 * 8
    assert profile["throughput"]["samples_per_s"] > 0 and profile["throughput"]["generated_tokens_per_s"] > 0
    assert len(profile["throughput"]["per_engine"]) == 1
    for step, step_time in zip(profile["attribution"]["steps"], profile["step_times_s"], strict=True):
        assert set(step["seconds"]) == set(CATEGORIES)
        assert sum(step["seconds"].values()) == pytest.approx(step_time, rel=1e-6, abs=1e-6)
    assert profile["latency"]["e2e_s"]["p50"] <= profile["latency"]["e2e_s"]["p99"]
    assert len(profile["weight_updates"]) == 1  # republished during step 2
    assert profile["attribution"]["total"]["weight_update_s"] > 0


def test_profile_rollout_runs_each_engines_own_profiler_in_the_chosen_steps(run_dir):
    traces = sorted((run_dir / "engine_profiles").rglob("*.trace.json.gz"))
    assert [t.parent.name for t in traces] == ["step_1"]  # one engine, profiled in step 1 only
    events = json.loads(gzip.decompress(traces[0].read_bytes()))["traceEvents"]
    assert any(e.get("ph") == "X" for e in events)


def test_profile_rollout_writes_a_well_formed_trace(run_dir):
    events = json.loads((run_dir / "trace.json").read_text())["traceEvents"]
    for event in events:
        assert {"ph", "ts", "pid", "tid", "name"} <= set(event), event
    complete = [e for e in events if e["ph"] == "X"]
    assert all(e["dur"] >= 0 for e in complete)
    names = {e["name"] for e in complete}
    assert {"decode", "queued", "weight update"} <= names
    assert any(name.startswith("resume:") for name in names)  # APRIL's partials continued
    assert "abort" in names or "resume:abort" in names


def test_profile_rollout_report_renders_in_headless_chromium(run_dir, tmp_path):
    report = run_dir / "report.html"
    html = report.read_text()
    assert "<script" not in html and 'src="http' not in html and "<link" not in html  # opens offline
    browser = shutil.which("chromium")
    if browser is None:
        pytest.skip("chromium is not installed (as root on Debian: .ci/install_chromium.sh)")
    shot = tmp_path / "report.png"
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0"]
    result = subprocess.run(
        [*common, f"--screenshot={shot}", "--window-size=1200,2000", report.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Uncaught" not in result.stderr
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"), np.float64)
    assert pixels.std() > 10  # text and plots, not a blank page
    dom = subprocess.run([*common, "--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0
    assert dom.stdout.count("data:image/png;base64,") >= 5
    assert "Time attribution" in dom.stdout and "Resolved config" in dom.stdout


def test_profile_rollout_compare_writes_sweep_json_and_report(run_dir, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "slime_rl.cli", "profile-rollout", "--compare", str(run_dir), str(run_dir)]
        + ["--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    sweep = json.loads((tmp_path / "sweep.json").read_text())
    assert len(sweep["runs"]) == 2
    assert 0.0 <= sweep["runs"][0]["tail_waste_frac"] <= 1.0
    assert "<table>" in (tmp_path / "sweep_report.html").read_text()
