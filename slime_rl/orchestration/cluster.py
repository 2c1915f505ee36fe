"""Start a local Ray or join a cluster, with explicit resources.

A local Ray gets explicit logical CPUs (Ray's default lets a placement group wait forever with no error),
a capped object store and no dashboard unless asked. `ray.shutdown()` stops only what this process
started; nothing here ever runs `ray stop`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from slime_rl.config.cluster import ClusterConfig

logger = logging.getLogger(__name__)


def init_ray(cfg: ClusterConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    # Token auth is on by default in Ray 2.60; a local, loopback-only Ray needs none.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if cfg.address:
        ray.init(address=cfg.address, logging_level=logging.WARNING)
        logger.info("joined Ray cluster at %s", cfg.address)
        return
    ray.init(
        num_cpus=cfg.num_cpus,
        num_gpus=cfg.num_gpus,
        object_store_memory=cfg.object_store_memory_mb * 1024 * 1024,
        include_dashboard=cfg.include_dashboard,
        dashboard_host="127.0.0.1",
        logging_level=logging.WARNING,
        log_to_driver=True,
    )
    logger.info("started local Ray: %d CPUs, %d GPUs", cfg.num_cpus, cfg.num_gpus)


@contextmanager
def ray_session(cfg: ClusterConfig) -> Iterator[None]:
    """Ray for the duration of a block; a local Ray this block started is shut down on exit."""
    import ray

    owned = not ray.is_initialized()
    init_ray(cfg)
    try:
        yield
    finally:
        if owned:
            ray.shutdown()
