"""Integration fixtures: native engines serving a seeded toy model, a Redis buffer per test, the tied Qwen2 toy
model of the trainer tests, and weight publishers closed after each test."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from slime_rl.buffer.store import RedisBuffer
from slime_rl.config.engine import EngineConfig
from slime_rl.engines.server import EngineProcess
from slime_rl.toy.model import make_toy_model


@contextmanager
def toy_engine(
    tmp_path_factory: pytest.TempPathFactory, *, max_running_requests: int, max_context_len: int
) -> Iterator[str]:
    """A native engine on a seeded random toy model for the block; yields its URL and stops it by PID."""
    model = make_toy_model(tmp_path_factory.mktemp("toy") / "model", seed=0)
    cfg = EngineConfig(
        max_running_requests=max_running_requests, max_context_len=max_context_len, startup_timeout_s=120
    )
    engine = EngineProcess(cfg, str(model), log_path=str(tmp_path_factory.mktemp("logs") / "engine.log"))
    try:
        yield engine.start()
    finally:
        engine.stop()


@pytest.fixture
def buffer(redis_url: str) -> Iterator[RedisBuffer]:
    """A `RedisBuffer` under a fresh run id, cleared afterwards."""
    buf = RedisBuffer.from_url(redis_url, f"test-{uuid.uuid4().hex[:8]}")
    try:
        yield buf
    finally:
        buf.clear()
        buf.close()


@pytest.fixture(scope="module")
def tied_qwen(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A toy Qwen2 with tied embeddings: QKV bias, and under PP the last stage's copy of the embedding."""
    return str(make_toy_model(tmp_path_factory.mktemp("toy") / "qwen2", arch="qwen2", tie_word_embeddings=True))


@pytest.fixture
def publishers() -> Iterator[Callable[..., Any]]:
    """Makes `WeightPublisher`s on loopback and closes them after the test."""
    from slime_rl.trainer.weight_sync import WeightPublisher  # the trainer's imports, only where used

    made: list[WeightPublisher] = []

    def make(**kwargs) -> WeightPublisher:
        made.append(WeightPublisher("127.0.0.1", **kwargs))
        return made[-1]

    yield make
    for publisher in made:
        publisher.close()
