"""Placement of trainer ranks and engines on the Ray cluster.

Disaggregated (default): one bundle per trainer rank and one per engine, so training and generation
get separate CPUs/GPUs and can overlap (the async modes need this to show a real speedup on CPU, see
REFERENCE.md §2). Colocated: trainer rank i and engine i share bundle i, each actor asking for half of it.
The RolloutManager actor and the router are I/O bound and take no logical CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from slime_rl.config.cluster import ClusterConfig
from slime_rl.config.engine import EngineConfig
from slime_rl.config.trainer import TrainerConfig
from slime_rl.errors import ServiceError


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

    def remove(self) -> None:
        remove_placement_group(self.pg)


def engine_gpus(engine: EngineConfig) -> int:
    return 0 if engine.device == "cpu" else int(engine.sglang.get("tp_size", 1))


def create_placement(
    cluster: ClusterConfig,
    trainer: TrainerConfig,
    engine: EngineConfig,
    timeout_s: float = 120.0,
    *,
    with_trainer: bool = True,
) -> Placement:
    """Reserve the bundles and wait for them; a cluster that is too small fails with what it lacks.

    `with_trainer=False` (a rollout-only run) reserves the engines' bundles alone.
    """
    world, engines = (trainer.world_size if with_trainer else 0), engine.num_engines
    trainer_cpus, trainer_gpus = trainer.num_cpus_per_rank, trainer.num_gpus_per_rank
    engine_cpus, gpus_per_engine = engine.num_threads, engine_gpus(engine)
    if cluster.colocate:
        n = max(world, engines)
        bundles = [{"CPU": max(trainer_cpus, engine_cpus), "GPU": max(trainer_gpus, gpus_per_engine)}] * n
        trainer_slots = [Slot(i, bundles[i]["CPU"] / 2, bundles[i]["GPU"] / 2) for i in range(world)]
        engine_slots = [Slot(i, bundles[i]["CPU"] / 2, bundles[i]["GPU"] / 2) for i in range(engines)]
    else:
        bundles = [{"CPU": trainer_cpus, "GPU": trainer_gpus}] * world + [
            {"CPU": engine_cpus, "GPU": gpus_per_engine}
        ] * engines
        trainer_slots = [Slot(i, trainer_cpus, trainer_gpus) for i in range(world)]
        engine_slots = [Slot(world + i, engine_cpus, gpus_per_engine) for i in range(engines)]
    bundles = [{k: v for k, v in b.items() if v > 0} or {"CPU": 0.01} for b in bundles]
    pg = placement_group(bundles, strategy="PACK")
    ready, _ = ray.wait([pg.ready()], timeout=timeout_s)
    if not ready:
        remove_placement_group(pg)
        need_cpus = sum(b.get("CPU", 0) for b in bundles)
        need_gpus = sum(b.get("GPU", 0) for b in bundles)
        raise ServiceError(
            f"Ray could not place {world} trainer rank(s) and {engines} engine(s) within {timeout_s:.0f}s: they need "
            f"{need_cpus:g} CPUs and {need_gpus:g} GPUs, the cluster has {ray.cluster_resources()}. Lower "
            "trainer.*_parallel_size or engine.num_engines, or raise cluster.num_cpus / cluster.num_gpus."
        )
    return Placement(pg, trainer_slots, engine_slots)
