"""Simulated engines over HTTP: SGLang's protocol subset, many engines in one process, behind the real router."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from slime_rl.config.engine import EngineConfig, SimulatedEngineConfig
from slime_rl.engines.router import Router
from slime_rl.engines.server import EngineProcess
from slime_rl.engines.simulated.launcher import SimulatedEngines
from tests.polling import wait_until

VOCAB, EOS = 500, 2
STEP_MS, ROW_MS = 10.0, 0.2  # the fixture's cost model: a decode step of r rows takes STEP_MS + ROW_MS * r


def _cfg(**engine) -> EngineConfig:
    sim = SimulatedEngineConfig(
        decode_step_base_ms=STEP_MS, decode_row_ms=ROW_MS, vocab_size=VOCAB, eos_token_id=EOS, length_median=8
    )
    return EngineConfig(kind="simulated", simulated=sim, startup_timeout_s=60, **engine)


@pytest.fixture(scope="module")
def fleet() -> Iterator[tuple[SimulatedEngines, list[str]]]:
    engines = SimulatedEngines(_cfg(max_running_requests=2, max_context_len=256), 8)
    with engines as urls:
        yield engines, urls


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as client:
        yield client


def _generate(http: httpx.Client, url: str, **body) -> httpx.Response:
    return http.post(f"{url}/generate", json=body)


def test_simulated_engines_share_one_process(fleet):
    engines, urls = fleet
    assert len(urls) == 8 and len(set(urls)) == 8
    assert len(engines.pids) == 1


def test_simulated_generate_returns_ids_logprobs_and_meta_info(fleet, http):
    url = fleet[1][0]
    out = _generate(
        http, url, input_ids=[1, 2, 3], rid="one", return_logprob=True, sampling_params={"max_new_tokens": 64}
    )
    assert out.status_code == 200
    body = out.json()
    meta, ids = body["meta_info"], body["output_ids"]
    assert meta["id"] == "one" and meta["prompt_tokens"] == 3 and meta["completion_tokens"] == len(ids)
    assert all(0 <= t < VOCAB for t in ids)
    assert [t for _, t, _ in meta["output_token_logprobs"]] == ids
    assert all(lp < 0 for lp, _, _ in meta["output_token_logprobs"])
    if meta["finish_reason"]["type"] == "stop":
        assert meta["finish_reason"]["matched"] == EOS == ids[-1]
    else:
        assert meta["finish_reason"] == {"type": "length", "length": 64}
    assert meta["weight_version"] == "0" and meta["cached_tokens"] == 0
    assert meta["request_received_ts"] <= meta["forward_entry_time"] <= meta["request_finished_ts"]
    assert 0 <= meta["queue_time"] <= meta["first_token_latency"] <= meta["e2e_latency"]


def test_simulated_generate_is_length_capped_and_greedy_is_reproducible(fleet, http):
    url = fleet[1][0]
    body = {"input_ids": [4, 5], "sampling_params": {"max_new_tokens": 3, "ignore_eos": True, "temperature": 0}}
    first, second = (_generate(http, url, **body).json() for _ in range(2))
    assert first["meta_info"]["finish_reason"] == {"type": "length", "length": 3}
    assert first["output_ids"] == second["output_ids"] and EOS not in first["output_ids"]


def test_simulated_batch_generate_returns_one_output_per_prompt(fleet, http):
    out = _generate(http, fleet[1][0], input_ids=[[1, 2], [3, 4, 5]], rid="b", sampling_params={"max_new_tokens": 4})
    outputs = out.json()
    assert [o["meta_info"]["id"] for o in outputs] == ["b_0", "b_1"]
    assert [o["meta_info"]["prompt_tokens"] for o in outputs] == [2, 3]


def test_simulated_stream_sends_cumulative_chunks_then_done(fleet, http):
    body = {"input_ids": [1, 2], "stream": True, "sampling_params": {"max_new_tokens": 5, "ignore_eos": True}}
    with http.stream("POST", f"{fleet[1][0]}/generate", json=body) as response:
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert [len(c["output_ids"]) for c in chunks] == [1, 2, 3, 4, 5]
    assert chunks[-1]["output_ids"][:4] == chunks[3]["output_ids"]
    assert chunks[-1]["meta_info"]["finish_reason"]["type"] == "length"


def test_simulated_abort_returns_partial_outputs_for_running_and_waiting_requests(fleet, http):
    url = fleet[1][1]  # 2 slots: two requests run, the third waits
    long = {"max_new_tokens": 200, "ignore_eos": True}
    results: dict[str, dict] = {}

    def run(rid: str) -> None:
        results[rid] = _generate(http, url, input_ids=[1, 2, 3], rid=rid, sampling_params=long).json()

    def running() -> int:
        return http.get(f"{url}/v1/loads").json()["loads"][0]["num_running_reqs"]

    # Started one at a time, so job-0 surely holds a slot (and has decoded) when it is aborted.
    threads = [threading.Thread(target=run, args=(f"job-{i}",)) for i in range(3)]
    for count, thread in enumerate(threads[:2], start=1):
        thread.start()
        wait_until(lambda count=count: running() == count, f"{count} running requests")
    threads[2].start()
    wait_until(lambda: http.get(f"{url}/v1/loads").json()["loads"][0]["num_waiting_reqs"] == 1, "a waiting request")
    time.sleep(0.2)
    assert http.post(f"{url}/abort_request", json={"rid": "job-0"}).status_code == 200
    threads[0].join(timeout=10)
    assert http.post(f"{url}/abort_request", json={"abort_all": True}).status_code == 200
    for thread in threads:
        thread.join(timeout=10)
    reasons = {rid: r["meta_info"]["finish_reason"]["type"] for rid, r in results.items()}
    assert reasons == {"job-0": "abort", "job-1": "abort", "job-2": "abort"}
    assert 0 < len(results["job-0"]["output_ids"]) < 200
    assert http.get(f"{url}/v1/loads").json()["loads"][0]["num_running_reqs"] == 0


def test_simulated_pause_in_place_holds_tokens_until_continue(fleet, http):
    url = fleet[1][2]
    result: dict = {}
    body = {"input_ids": [1], "sampling_params": {"max_new_tokens": 30, "ignore_eos": True}}
    thread = threading.Thread(target=lambda: result.update(_generate(http, url, **body).json()))
    thread.start()
    time.sleep(0.1)
    assert http.post(f"{url}/pause_generation", json={"mode": "in_place"}).status_code == 200
    info = http.get(f"{url}/get_server_info").json()["internal_states"][0]
    assert info["paused"] and info["num_running_reqs"] == 1
    time.sleep(0.5)  # 30 tokens take ~0.3 s of modelled time: only the pause keeps it running
    assert thread.is_alive()
    assert http.post(f"{url}/pause_generation", json={"mode": "bogus"}).status_code == 400
    assert http.post(f"{url}/continue_generation").status_code == 200
    thread.join(timeout=10)
    assert result["meta_info"]["finish_reason"] == {"type": "length", "length": 30}


def test_simulated_weight_updates_set_the_version_and_distributed_ones_are_refused(fleet, http):
    url = fleet[1][3]
    update = http.post(f"{url}/update_weight_version", json={"new_version": "7"})
    assert update.json()["new_version"] == "7"
    assert http.get(f"{url}/get_weight_version").json() == {"weight_version": "7"}
    disk = http.post(f"{url}/update_weights_from_disk", json={"model_path": "/nowhere", "weight_version": "8"})
    assert disk.status_code == 200 and disk.json()["success"] is True
    out = _generate(http, url, input_ids=[1], sampling_params={"max_new_tokens": 2})
    assert out.json()["meta_info"]["weight_version"] == "8"
    group = {"master_address": "127.0.0.1", "master_port": 29999, "rank_offset": 1, "world_size": 2}
    refused = http.post(f"{url}/init_weights_update_group", json=group)
    assert refused.status_code == 400 and refused.json()["success"] is False
    assert "update_weights_from_disk" in refused.json()["message"]
    assert http.get(f"{url}/get_model_info").json()["weight_version"] == "8"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"text": "hello"}, "send input_ids"),
        ({"input_ids": [1, VOCAB]}, f"input_ids\\[1\\] must be a token id in \\[0, {VOCAB}\\)"),
        ({"input_ids": [1], "sampling_params": {"bogus": 1}}, "unknown key 'bogus'"),
        ({"input_ids": [1] * 200, "sampling_params": {"max_new_tokens": 100}}, "maximum context length of 256"),
        ({}, "exactly one of input_ids and text"),
    ],
)
def test_simulated_bad_requests_get_400_like_the_native_engine(fleet, http, body, message):
    out = _generate(http, fleet[1][4], **body)
    assert out.status_code == 400
    assert re.search(message, out.json()["error"]["message"])


def test_simulated_decode_time_follows_the_cost_model(fleet, http):
    url = fleet[1][5]

    def seconds(tokens: int) -> float:
        params = {"max_new_tokens": tokens, "ignore_eos": True}
        return _generate(http, url, input_ids=[1, 2], sampling_params=params).json()["meta_info"]["e2e_latency"]

    short, long = seconds(10), seconds(40)
    # k tokens: the prefill step gives 2 tokens, then k - 2 more steps of one row each.
    modelled_long = (40 - 1) * (STEP_MS + ROW_MS) / 1000
    assert modelled_long * 0.95 <= long < modelled_long * 3
    assert 2.0 < long / short < 6.0  # modelled ratio 39/9 = 4.3


def test_router_routes_to_simulated_engines(fleet, http):
    urls = fleet[1]
    router = Router(policy="round_robin")
    try:
        router_url = router.start(urls)
        before = [http.get(f"{u}/get_server_info").json()["internal_states"][0]["num_finished_reqs"] for u in urls]
        for i in range(16):
            out = _generate(http, router_url, input_ids=[1, 2, i + 3], sampling_params={"max_new_tokens": 2})
            assert out.status_code == 200, out.text
        after = [http.get(f"{u}/get_server_info").json()["internal_states"][0]["num_finished_reqs"] for u in urls]
    finally:
        router.stop()
    served = [b - a for a, b in zip(before, after, strict=True)]
    assert sum(served) == 16 and sum(1 for n in served if n) >= 4


def test_engine_process_starts_one_simulated_engine(tmp_path, http):
    engine = EngineProcess(_cfg(), "simulated", log_path=str(tmp_path / "engine.log"))
    try:
        url = engine.start()
        out = _generate(http, url, input_ids=[1, 2], sampling_params={"max_new_tokens": 3, "ignore_eos": True})
        assert out.json()["meta_info"]["completion_tokens"] == 3
    finally:
        engine.stop()
    assert not engine.is_alive()


def test_simulated_engine_takes_its_per_request_cost_from_a_calibration_file(tmp_path, http):
    step = {"benchmark": "decode_step_cost", "kv_len": 16, "steps": 11, "step_ms": {"1": 1.0, "2": 1.0}}
    calibration = tmp_path / "calibration.json"
    calibration.write_text(json.dumps([{**step, "request_ms": 200.0, "prefill_base_ms": 0.0}]))
    sim = SimulatedEngineConfig(vocab_size=VOCAB, eos_token_id=EOS, calibration_path=str(calibration))
    cfg = EngineConfig(kind="simulated", simulated=sim, startup_timeout_s=60)
    engine = EngineProcess(cfg, "simulated", log_path=str(tmp_path / "engine.log"))
    try:
        url = engine.start()
        params = {"max_new_tokens": 3, "ignore_eos": True}
        meta = _generate(http, url, input_ids=[1, 2], sampling_params=params).json()["meta_info"]
    finally:
        engine.stop()
    # Two 1 ms steps, then the step the request ends in pays its 200 ms.
    assert 0.2 <= meta["e2e_latency"] < 0.6
