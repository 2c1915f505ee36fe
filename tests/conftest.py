"""Shared fixtures. Every server a fixture starts, it stops (by PID)."""

from __future__ import annotations

import os

import pytest

# One torch thread per test process: the machine has two cores shared by everything.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def redis_url():
    """A real embedded Redis (no AOF) for the whole session; yields its redis:// URL."""
    from slime_rl.buffer.server import EmbeddedRedis
    from slime_rl.config import BufferConfig

    with EmbeddedRedis(BufferConfig(appendonly=False)) as address:
        yield address.url


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` need a CUDA device; elsewhere they are reported as skipped, never silently dropped."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (run on a GPU machine: pytest -m gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
