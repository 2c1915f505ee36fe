"""Placement of trainer ranks and engines on the Ray cluster, following the plan (`plan.py`).

`create_placement` reads the live cluster's nodes, plans on them (`plan_placement`: the same plan
`slime-rl plan` prints) and reserves the plan's bundles in one placement group. On a multi-node cluster
each bundle is pinned to its planned node with a `ray.io/node-id` bundle label selector, so a TP group
stays on one node and an engine is whole on one node. The RolloutManager actor and the router are I/O
bound and take no logical CPU.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from slime_rl.config.buffer import BufferConfig
from slime_rl.config.cluster import ClusterConfig
from slime_rl.config.engine import EngineConfig
from slime_rl.config.trainer import TrainerConfig
from slime_rl.errors import ServiceError
from slime_rl.orchestration.plan import (
    ClusterPlan,
    NodeSpec,
    check_runnable,
    described_nodes,
    engine_gpus,
    plan_placement,
)

__all__ = ["Placement", "Slot", "create_placement", "engine_gpus", "plan_cluster", "probe_nodes", "read_ray_nodes"]

logger = logging.getLogger(__name__)

NODE_ID_LABEL = "ray.io/node-id"  # a label every Ray node carries (its hex id)


@dataclass
class Slot:
    """Where one actor goes: a bundle of the placement group and the resources the actor asks for."""

    bundle_index: int
    num_cpus: float
    num_gpus: float

    def options(self, pg: PlacementGroup) -> dict:
        strategy = PlacementGroupSchedulingStrategy(placement_group=pg, placement_group_bundle_index=self.bundle_index)
        return {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus, "scheduling_strategy": strategy}


@dataclass
class Placement:
    pg: PlacementGroup
    trainer_slots: list[Slot]
    engine_slots: list[Slot]
    plan: ClusterPlan | None = None

    def remove(self) -> None:
        remove_placement_group(self.pg)


def read_ray_nodes() -> list[NodeSpec]:
    """The alive nodes of the Ray this process is connected to, in a stable order (the driver's node first)."""
    driver_id = ray.get_runtime_context().get_node_id()
    alive = [n for n in ray.nodes() if n.get("Alive")]
    alive.sort(key=lambda n: (n["NodeID"] != driver_id, n.get("NodeManagerAddress", ""), n["NodeID"]))
    return [
        NodeSpec(
            index=i,
            num_cpus=float(n["Resources"].get("CPU", 0.0)),
            num_gpus=float(n["Resources"].get("GPU", 0.0)),
            node_id=n["NodeID"],
            address=n.get("NodeManagerAddress"),
            is_driver=n["NodeID"] == driver_id,
        )
        for i, n in enumerate(alive)
    ]


def create_placement(
    cluster: ClusterConfig,
    trainer: TrainerConfig,
    engine: EngineConfig,
    timeout_s: float = 120.0,
    *,
    with_trainer: bool = True,
) -> Placement:
    """Plan on the live cluster, reserve the plan's bundles and wait for them.

    A run that cannot fit raises `PlanError` at once, naming what is missing; bundles that fit the cluster's
    totals but stay unplaced for `timeout_s` (other jobs hold the resources) raise `ServiceError`.
    `with_trainer=False` (a rollout-only run) reserves the engines' bundles alone.
    """
    check_runnable(cluster)
    source = "ray" if cluster.address else "local"
    plan = plan_placement(
        read_ray_nodes(), trainer, engine, colocate=cluster.colocate, with_trainer=with_trainer, source=source
    )
    bundles = [b.resources() for b in plan.bundles]
    selectors = [{NODE_ID_LABEL: node_id} for node_id in plan.node_ids()] if plan.is_multi_node else None
    pg = placement_group(bundles, strategy="PACK", bundle_label_selector=selectors)
    ready, _ = ray.wait([pg.ready()], timeout=timeout_s)
    if not ready:
        remove_placement_group(pg)
        need_cpus = sum(b.num_cpus for b in plan.bundles)
        need_gpus = sum(b.num_gpus for b in plan.bundles)
        raise ServiceError(
            f"Ray could not place {len(plan.trainer_ranks)} trainer rank(s) and {len(plan.engines)} engine(s) within "
            f"{timeout_s:.0f}s: they need {need_cpus:g} CPUs and {need_gpus:g} GPUs, the cluster has "
            f"{ray.available_resources()} free of {ray.cluster_resources()}. Other jobs may hold them; lower "
            "trainer.*_parallel_size or engine.num_engines, or free resources (`slime-rl plan` shows the plan)."
        )
    trainer_slots = [Slot(r.bundle, r.num_cpus, r.num_gpus) for r in plan.trainer_ranks]
    engine_slots = [Slot(e.bundle, e.num_cpus, e.num_gpus) for e in plan.engines]
    logger.info(
        "placement: %d bundle(s) on %d node(s)%s",
        len(bundles),
        len({b.node for b in plan.bundles}),
        ", pinned to their planned nodes" if selectors else "",
    )
    return Placement(pg, trainer_slots, engine_slots, plan)


def plan_cluster(
    cluster: ClusterConfig,
    trainer: TrainerConfig,
    engine: EngineConfig,
    buffer: BufferConfig | None = None,
    *,
    with_trainer: bool = True,
) -> ClusterPlan:
    """The plan of a run without starting any actor: on the described nodes, or on a joined cluster's live ones.

    Joining (`cluster.address`) connects this process to Ray as a driver, reads the alive nodes and disconnects;
    a local or described cluster (address null) is planned from `cluster.num_nodes/num_cpus/num_gpus`, no Ray.
    """
    if not cluster.address:
        nodes, source = described_nodes(cluster), ("local" if cluster.num_nodes == 1 else "described")
    else:
        from slime_rl.orchestration.cluster import ray_session

        with ray_session(cluster):
            nodes, source = read_ray_nodes(), "ray"
    return plan_placement(
        nodes, trainer, engine, colocate=cluster.colocate, with_trainer=with_trainer, buffer=buffer, source=source
    )


def _hostname() -> str:
    import socket

    return socket.gethostname()


def probe_nodes(timeout_s: float) -> list[dict]:
    """Every node Ray knows, alive or dead, and whether a CPU-less task pinned to it ran within `timeout_s`.

    Returns one dict per node: index, node_id, address, alive, num_cpus, num_gpus, gpu_names (Ray's
    accelerator types), is_driver, ran_task, hostname, error.
    """
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    alive = {n.node_id: n for n in read_ray_nodes()}
    dead = [n for n in ray.nodes() if not n.get("Alive") and n["NodeID"] not in alive]
    task = ray.remote(num_cpus=0, max_retries=0)(_hostname)
    refs = {
        node_id: task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)).remote()
        for node_id in alive
    }
    ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout_s)
    resources = {n["NodeID"]: n["Resources"] for n in ray.nodes()}
    probes = []
    for node in alive.values():
        ref, hostname, error = refs[node.node_id], None, None
        if ref in ready:
            try:
                hostname = ray.get(ref)
            except ray.exceptions.RayError as err:
                error = str(err).strip().splitlines()[0]
        else:
            error = "timed out"
            ray.cancel(ref, force=True)
        gpu_names = [k.split(":", 1)[1] for k in resources.get(node.node_id, {}) if k.startswith("accelerator_type:")]
        probes.append(
            {
                "index": node.index,
                "node_id": node.node_id,
                "address": node.address,
                "alive": True,
                "num_cpus": node.num_cpus,
                "num_gpus": node.num_gpus,
                "gpu_names": gpu_names,
                "is_driver": node.is_driver,
                "ran_task": hostname is not None,
                "hostname": hostname,
                "error": error,
            }
        )
    for i, n in enumerate(dead, start=len(probes)):
        res = n.get("Resources", {})
        probes.append(
            {
                "index": i,
                "node_id": n["NodeID"],
                "address": n.get("NodeManagerAddress"),
                "alive": False,
                "num_cpus": float(res.get("CPU", 0.0)),
                "num_gpus": float(res.get("GPU", 0.0)),
                "gpu_names": [],
                "is_driver": False,
                "ran_task": False,
                "hostname": None,
                "error": "dead",
            }
        )
    return probes
