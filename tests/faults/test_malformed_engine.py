"""An engine that answers `/generate` with malformed JSON, wrong shapes or HTTP 500, behind the real
sglang-router next to a real native engine, driven by the real RolloutManager and Redis buffer: the step
completes on the good engine or fails with a ServiceError that names the problem (never a raw JSON parse
error), and the buffer's counters invariant holds either way."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from slime_rl.config.rollout import RolloutConfig
from slime_rl.engines.client import EngineClient
from slime_rl.engines.router import Router
from slime_rl.errors import ServiceError
from slime_rl.rollout.manager import RolloutManager
from tests.integration.conftest import buffer, toy_engine  # noqa: F401 - buffer is a fixture
from tests.integration.test_april import _refill, _varied_reward

# /generate answers, in turn: (status, body).
BROKEN_ANSWERS = [
    (200, b'{"text": "a", "output_ids": [1'),
    (200, b"[1, 2, 3]"),
    (200, b'{"text": "a", "output_ids": ["x"], "meta_info": {}}'),
    (500, b"Internal Server Error"),
]
# Everything else answers like a healthy idle engine, so the router registers it and the manager can abort it.
CONTROL_ANSWERS = {
    "/v1/loads": {"loads": [{"dp_rank": 0, "num_running_reqs": 0, "num_waiting_reqs": 0}]},
    "/get_weight_version": {"weight_version": "0"},
    "/get_model_info": {"model_path": "malformed", "is_generation": True, "weight_version": "0"},
    "/get_server_info": {},
}


@contextmanager
def malformed_engine() -> Iterator[tuple[str, list[str]]]:
    """A threaded HTTP server on loopback whose `/generate` is broken; yields its URL and the paths it served."""
    answers = itertools.cycle(BROKEN_ANSWERS)
    served: list[str] = []
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            path = self.path.split("?")[0]
            served.append(path)
            self._answer(200, json.dumps(CONTROL_ANSWERS.get(path, {})).encode())

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            served.append(self.path)
            if self.path != "/generate":
                self._answer(200, b'{"success": true, "message": ""}')
                return
            with lock:
                status, body = next(answers)
            self._answer(status, body)

        def log_message(self, *args: object) -> None:  # the router's health checks would flood the test log
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", served
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    """(router URL, good engine URL, bad engine URL, paths the bad engine served)."""
    with (
        toy_engine(tmp_path_factory, max_running_requests=8, max_context_len=128) as good_url,
        malformed_engine() as (bad_url, served),
    ):
        router = Router(policy="round_robin", log_path=str(tmp_path_factory.mktemp("router") / "router.log"))
        try:
            router.start([good_url])
            router.add_worker(bad_url)
            yield router.url, good_url, bad_url, served
        finally:
            router.stop()


def test_step_with_a_malformed_engine_completes_or_fails_clearly(services, buffer):  # noqa: F811 - fixture
    router_url, good_url, bad_url, served = services
    rollout = RolloutConfig(rollout_batch_size=2, n_samples_per_prompt=4, max_new_tokens=8)

    async def go() -> ServiceError | None:
        async with (
            EngineClient(router_url, backoff_s=0.0) as router,
            EngineClient(good_url) as good,
            EngineClient(bad_url) as bad,
        ):
            await good.update_weight_version("0")
            manager = RolloutManager(
                rollout,
                router=router,
                engines=[good, bad],
                buffer=buffer,
                refill_prompts=_refill(buffer, rollout.n_samples_per_prompt),
                reward_fn=_varied_reward,
                decode=lambda ids: "",
            )
            try:
                await manager.generate(0)
            except ServiceError as err:
                return err
            return None

    error = asyncio.run(go())
    assert "/generate" in served, "the router never sent a request to the malformed engine"
    if error is not None:
        assert "malformed response" in str(error) or "HTTP 500" in str(error), repr(error)
    assert buffer.snapshot()["unaccounted"] == 0, buffer.snapshot()
