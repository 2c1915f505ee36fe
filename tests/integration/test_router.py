"""The real sglang-router in front of two native engines: workers added and removed through its API."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from slime_rl.config.engine import EngineConfig
from slime_rl.engines.client import EngineClient
from slime_rl.engines.protocol import GenerateRequest, SamplingParams
from slime_rl.engines.router import Router
from slime_rl.engines.server import EngineProcess
from slime_rl.errors import ServiceError
from slime_rl.toy.model import make_toy_model


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    model = make_toy_model(tmp_path_factory.mktemp("toy") / "model", seed=0)
    cfg = EngineConfig(max_running_requests=4, max_context_len=128, startup_timeout_s=120)
    logs = tmp_path_factory.mktemp("logs")
    started = [EngineProcess(cfg, str(model), log_path=str(logs / f"engine_{i}.log")) for i in range(2)]
    try:
        for engine in started:
            engine.start()
        yield started
    finally:
        for engine in started:
            engine.stop()


@pytest.fixture
def router():
    instance = Router(policy="round_robin")
    try:
        instance.start()
        yield instance
    finally:
        instance.stop()


def finished_count(url: str) -> int:
    return httpx.get(f"{url}/get_server_info").json()["internal_states"][0]["num_finished_reqs"]


def generate_through(url: str, num_requests: int) -> None:
    async def go():
        async with EngineClient(url) as client:
            params = SamplingParams(max_new_tokens=3)
            for _ in range(num_requests):
                out = await client.generate(GenerateRequest(input_ids=[1, 5, 6], sampling_params=params))
                assert out.completion_tokens == 3

    asyncio.run(go())


def test_router_distributes_requests_across_two_engines(engines, router):
    for engine in engines:
        router.add_worker(engine.url)
    assert sorted(router.list_workers()) == sorted(e.url for e in engines)
    before = [finished_count(e.url) for e in engines]
    generate_through(router.url, 8)
    served = [finished_count(e.url) - b for e, b in zip(engines, before, strict=True)]
    assert sum(served) == 8 and min(served) >= 3


def test_router_removed_worker_gets_no_more_requests(engines, router):
    for engine in engines:
        router.add_worker(engine.url)
    router.remove_worker(engines[1].url)
    assert router.list_workers() == [engines[0].url]
    before = finished_count(engines[1].url)
    generate_through(router.url, 4)
    assert finished_count(engines[1].url) == before


def test_router_failed_start_error_shows_the_tail_of_its_log(tmp_path):
    log_path = tmp_path / "logs" / "router.log"  # the folder does not exist yet
    failing = Router(request_timeout_s=-5, log_path=str(log_path))  # the router rejects a negative timeout
    with pytest.raises(ServiceError, match=r"(?s)router.log.*OverflowError"):
        failing.start()
    assert "OverflowError" in log_path.read_text()
