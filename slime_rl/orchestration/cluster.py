"""Start a local Ray or join a cluster, with explicit resources and Ray's token auth left on.

A local Ray listens on 127.0.0.1 only, gets explicit logical CPUs (Ray's default lets a placement group
wait forever with no error), a capped object store and no dashboard unless asked. It is always a fresh
Ray: a leftover `ray_current_cluster` file or `RAY_ADDRESS` never redirects a local run. Joining a
cluster (`cluster.address`) needs that cluster's token (see `ClusterConfig.address`). `ray.shutdown()`
stops only what this process started; nothing here ever runs `ray stop`.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from slime_rl.config.cluster import ClusterConfig
from slime_rl.errors import ServiceError

logger = logging.getLogger(__name__)

# "0": Ray takes 127.0.0.1 as the node IP, and every Ray server (GCS, raylet, object manager, workers,
# agents) binds it; otherwise they listen on all interfaces. Ray reads it when `ray` is imported, and
# the processes it starts inherit it. There is no bind-address setting (REFERENCE.md §2).
LOOPBACK_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
TOKEN_HELP = (
    "a cluster with token auth needs RAY_AUTH_MODE=token and its token in RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH "
    "or ~/.ray/auth_token (print it on the head node with `ray get-auth-token`)"
)


def _use_loopback_only() -> None:
    os.environ[LOOPBACK_ONLY_ENV] = "0"
    # A process that imported `ray` before this function read the old value. Its only use in this process
    # is the driver's choice of node IP for a new local Ray; `_start_local` checks the result.
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


def _join(cfg: ClusterConfig) -> None:
    import ray
    from ray.exceptions import AuthenticationError

    try:
        ray.init(address=cfg.address, logging_level=logging.WARNING)
    except (AuthenticationError, ConnectionError) as err:
        raise ServiceError(
            f"cannot join Ray at cluster.address={cfg.address!r}: {err}. Check that the cluster is up; {TOKEN_HELP}"
        ) from err
    logger.info("joined Ray cluster at %s", cfg.address)


def _start_local(cfg: ClusterConfig) -> None:
    import ray

    ray.init(
        address="local",  # a fresh Ray, whatever ray_current_cluster or RAY_ADDRESS say
        num_cpus=cfg.num_cpus,
        num_gpus=cfg.num_gpus,
        object_store_memory=cfg.object_store_memory_mb * 1024 * 1024,
        include_dashboard=cfg.include_dashboard,
        dashboard_host="127.0.0.1",
        logging_level=logging.WARNING,
        log_to_driver=True,
    )
    node_ip = ray.util.get_node_ip_address()
    if not ipaddress.ip_address(node_ip).is_loopback:
        ray.shutdown()
        raise ServiceError(
            f"the local Ray took node IP {node_ip}, so it would listen beyond loopback; "
            f"set {LOOPBACK_ONLY_ENV}=0 in the environment before Python starts"
        )
    logger.info("started local Ray on 127.0.0.1: %d CPUs, %d GPUs", cfg.num_cpus, cfg.num_gpus)


def init_ray(cfg: ClusterConfig) -> None:
    """Join `cfg.address`, or start a local loopback-only Ray; nothing if Ray is already initialised."""
    if not cfg.address:
        _use_loopback_only()  # before this process imports `ray`, where it has not yet
    import ray

    if ray.is_initialized():
        return
    if cfg.address:
        _join(cfg)
    else:
        _start_local(cfg)


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


class Located:
    """Mixin for actor bodies: the Ray node the actor runs on (the driver records where each actor landed)."""

    def node_id(self) -> str:
        return this_node_id()


def this_node_id() -> str:
    """The Ray node of the calling process (the driver's, where it runs the router and the Redis it starts)."""
    import ray

    return ray.get_runtime_context().get_node_id()
