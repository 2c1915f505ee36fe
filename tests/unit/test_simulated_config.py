"""engine.kind=simulated: the config section, the server command, and the scheduler's request life cycle."""

import asyncio

import pytest

from slime_rl.config import load_config
from slime_rl.config.engine import EngineConfig, SimulatedEngineConfig
from slime_rl.engines.native.requests import EngineRequest, RequestUpdate
from slime_rl.engines.protocol import SamplingParams
from slime_rl.engines.server import EngineProcess
from slime_rl.engines.simulated.cost import CostModel
from slime_rl.engines.simulated.lengths import ResponseLengths
from slime_rl.engines.simulated.scheduler import SimulatedScheduler
from slime_rl.errors import ConfigError


def test_load_config_engine_simulated_preset_is_valid():
    cfg = load_config(["engine=simulated", "engine.simulated.length_median=12"])
    assert cfg.engine.kind == "simulated"
    assert cfg.engine.simulated.length_median == 12


def test_simulated_config_refuses_a_negative_cost_and_sigma():
    with pytest.raises(ConfigError, match="engine.simulated.decode_row_ms must be >= 0"):
        SimulatedEngineConfig(decode_row_ms=-0.1)
    with pytest.raises(ConfigError, match="engine.simulated.length_sigma must be >= 0"):
        SimulatedEngineConfig(length_sigma=-1)


def test_engine_process_command_for_simulated_passes_the_cost_model_and_lengths():
    sim = SimulatedEngineConfig(decode_step_base_ms=3.0, length_trace_path="/t.jsonl", calibration_path="/c.json")
    argv = EngineProcess(EngineConfig(kind="simulated", simulated=sim), "/model").command(4242)
    flags = dict(zip(argv[3::2], argv[4::2], strict=False))
    assert argv[1:3] == ["-m", "slime_rl.engines.simulated"]
    assert flags["--num-engines"] == "1" and flags["--port"] == "4242" and flags["--model-path"] == "/model"
    assert flags["--decode-step-base-ms"] == "3.0" and flags["--calibration"] == "/c.json"
    assert flags["--length-trace"] == "/t.jsonl"


def _run(requests: list[tuple[str, SamplingParams]], *, slots: int, median: float) -> list[RequestUpdate]:
    async def main() -> list[RequestUpdate]:
        scheduler = SimulatedScheduler(
            CostModel(decode_base_s=0.0, decode_row_s=0.0, prefill_token_s=0.0),
            ResponseLengths(median=median, sigma=0.0),
            max_running_requests=slots,
            max_prefill_tokens=64,
            max_context_len=128,
            vocab_size=50,
            eos_token_id=7,
        )
        scheduler.start()
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in requests]
        for (rid, params), future in zip(requests, futures, strict=True):

            def sink(update: RequestUpdate, future: asyncio.Future = future) -> None:
                if update.finish_reason is not None:
                    future.set_result(update)

            scheduler.submit(EngineRequest(rid=rid, input_ids=[1, 2, 3], params=params, sink=sink))
        assert scheduler.loads()["num_waiting_reqs"] == len(requests)
        results = await asyncio.gather(*futures)
        await scheduler.stop()
        return results

    return asyncio.run(main())


def test_simulated_scheduler_ends_at_the_drawn_length_with_eos_or_at_max_new_tokens():
    stop, capped, ignored, empty = _run(
        [
            ("a", SamplingParams(max_new_tokens=10)),
            ("b", SamplingParams(max_new_tokens=3)),
            ("c", SamplingParams(max_new_tokens=6, ignore_eos=True)),
            ("d", SamplingParams(max_new_tokens=0)),
        ],
        slots=2,
        median=5,
    )
    assert len(stop.output_ids) == 5 and stop.output_ids[-1] == 7
    assert stop.finish_reason is not None and stop.finish_reason.to_json() == {"type": "stop", "matched": 7}
    assert capped.finish_reason is not None and capped.finish_reason.to_json() == {"type": "length", "length": 3}
    assert len(ignored.output_ids) == 6 and 7 not in ignored.output_ids
    assert empty.output_ids == [] and empty.finish_reason is not None and empty.finish_reason.type == "length"
    assert all(0 <= t < 50 for u in (stop, capped, ignored) for t in u.output_ids)
    assert len(stop.logprobs) == 5 and all(lp < 0 for lp in stop.logprobs)
    assert ignored.metrics["queue_time"] >= stop.metrics["queue_time"] >= 0.0  # "c" waited for a free slot


def test_simulated_scheduler_refuses_a_live_rid_and_an_overlong_request():
    async def main() -> None:
        scheduler = SimulatedScheduler(
            CostModel(),
            ResponseLengths(median=5, sigma=0.0),
            max_running_requests=1,
            max_prefill_tokens=64,
            max_context_len=8,
            vocab_size=50,
            eos_token_id=7,
        )
        request = EngineRequest(rid="x", input_ids=[1], params=SamplingParams(max_new_tokens=2), sink=lambda _: None)
        scheduler.submit(request)
        with pytest.raises(ValueError, match="already running"):
            scheduler.submit(EngineRequest(rid="x", input_ids=[1], params=request.params, sink=lambda _: None))
        with pytest.raises(ValueError, match="maximum context length of 8"):
            scheduler.submit(EngineRequest(rid="y", input_ids=[1] * 4, params=SamplingParams(), sink=lambda _: None))
        await scheduler.stop()

    asyncio.run(main())
