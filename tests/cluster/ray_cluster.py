"""A real multi-node Ray cluster on loopback for tests: `ray.cluster_utils.Cluster`, token auth on.

`loopback_ray_cluster()` starts a head and `num_nodes - 1` more nodes, all on 127.0.0.1 (every Ray listener
binds loopback only), in a private RAY_TMPDIR, with token auth (one token per test process). It yields a
`RayCluster`: the address to join and the environment a subprocess needs to join (`env`). On exit it shuts
the cluster down (`Cluster.shutdown()`, then SIGKILL by PID for any Ray process it left) and restores this
process's environment. Nothing here runs `ray stop`.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import psutil

# What the cluster's processes and a joining driver need: loopback-only Ray, token auth with this token.
CLUSTER_ENV_KEYS = ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_TMPDIR")
# Ray keeps the first token a process used for the rest of its life (a second cluster with another token
# fails to start with InvalidAuthToken), so every cluster of one test process shares one.
_NEW_TOKEN = secrets.token_hex(32)


def process_token() -> str:
    """The token this process's Ray uses or will use: RAY_AUTH_TOKEN, else the one a local `ray.init()` wrote
    to ~/.ray/auth_token, else one made for this process."""
    if token := os.environ.get("RAY_AUTH_TOKEN"):
        return token
    saved = Path.home() / ".ray" / "auth_token"
    return saved.read_text().strip() if saved.is_file() else _NEW_TOKEN


@dataclass
class RayCluster:
    address: str  # host:port of the head's GCS, for `ray.init(address=...)` or cluster.address
    env: dict[str, str]  # os.environ plus the keys a subprocess needs to join (token included)
    node_ids: list[str] = field(default_factory=list)  # hex ids, head first
    pids: list[int] = field(default_factory=list)  # every Ray process the nodes started


def _reread_ray_settings() -> None:
    """Make this process's Ray follow the environment again: Ray reads the loopback switch and the auth mode when
    it is imported and caches them, so a test process that imported Ray before the cluster's settings were set
    would resolve 127.0.0.1 to the LAN address and talk to the cluster without its token."""
    from ray._private import ray_constants
    from ray._raylet import AuthenticationTokenLoader, Config

    ray_constants.ENABLE_RAY_CLUSTER = os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") != "0"
    Config.initialize("")  # re-reads RAY_AUTH_MODE, as Ray's own token set-up does
    AuthenticationTokenLoader.instance().reset_cache()


@contextmanager
def loopback_ray_cluster(num_nodes: int = 2, num_cpus_per_node: int = 1) -> Iterator[RayCluster]:
    """A `num_nodes`-node Ray cluster on 127.0.0.1 for the block (see the module docstring)."""
    tmpdir = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # short: Ray's unix socket paths are limited to 107 bytes
    settings = {
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": process_token(),
        "RAY_TMPDIR": tmpdir,
    }
    saved = {key: os.environ.get(key) for key in CLUSTER_ENV_KEYS}
    os.environ.update(settings)  # the nodes' processes inherit them
    _reread_ray_settings()  # this process may have imported Ray before (test collection does)
    from ray.cluster_utils import Cluster

    cluster = None
    processes: list[psutil.Process] = []
    try:
        cluster = Cluster(
            initialize_head=True,
            head_node_args=dict(
                node_ip_address="127.0.0.1", num_cpus=num_cpus_per_node, num_gpus=0, include_dashboard=False
            ),
        )
        for _ in range(num_nodes - 1):
            cluster.add_node(node_ip_address="127.0.0.1", num_cpus=num_cpus_per_node, num_gpus=0)
        cluster.wait_for_nodes(timeout=120)  # Ray's default 30 s is too short on two busy cores
        nodes = cluster.list_all_nodes()
        for node in nodes:
            for infos in node.all_processes.values():
                for info in infos:
                    with suppress(psutil.Error):
                        processes.append(psutil.Process(info.process.pid))
        yield RayCluster(
            address=cluster.address,
            env={**os.environ, **settings},
            node_ids=[node.node_id for node in nodes],
            pids=[p.pid for p in processes],
        )
    finally:
        if cluster is not None:
            cluster.shutdown()
        for process in processes:  # whatever shutdown left behind; psutil refuses a PID that was reused
            with suppress(psutil.Error):
                process.kill()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _reread_ray_settings()
        shutil.rmtree(tmpdir, ignore_errors=True)
