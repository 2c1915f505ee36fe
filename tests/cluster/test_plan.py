"""`slime-rl plan`: placement plans (pure), the command on this machine, the presets, a sweep, and a real 2-node Ray.

The pure tests plan on hand-made nodes. The command tests run `slime-rl plan` as a subprocess; the last two
join a 2-node loopback Ray cluster (tests/cluster/ray_cluster.py): one prints the plan of the live nodes,
the other reserves a placement there and checks each bundle landed on its planned node.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from slime_rl.config import BufferConfig, ClusterConfig, EngineConfig, TrainerConfig
from slime_rl.config.engine import SimulatedEngineConfig
from slime_rl.errors import ConfigError
from slime_rl.orchestration.plan import (
    NodeSpec,
    PlanError,
    check_runnable,
    described_nodes,
    format_json,
    grid_coordinates,
    plan_placement,
)
from tests.cluster.ray_cluster import loopback_ray_cluster

pytestmark = pytest.mark.cluster

SLIME_RL = str(Path(sys.executable).with_name("slime-rl"))
PRESET_PATHS = ["model.path=/models/qwen", "buffer.data.path=/data/math.jsonl"]


def gpu_nodes(*gpus: int, cpus: int = 32) -> list[NodeSpec]:
    return [NodeSpec(i, cpus, g, is_driver=i == 0) for i, g in enumerate(gpus)]


def gpu_trainer(tp: int = 1, pp: int = 1, dp: int = 1) -> TrainerConfig:
    return TrainerConfig(
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp, data_parallel_size=dp, num_gpus_per_rank=1
    )


def sglang(num_engines: int, tp_size: int = 1) -> EngineConfig:
    return EngineConfig(kind="sglang", device="cuda", num_engines=num_engines, sglang={"tp_size": tp_size})


def run_plan(*overrides: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [SLIME_RL, "plan", *overrides], capture_output=True, text=True, timeout=120, env=env, cwd="/tmp"
    )


def json_objects(text: str) -> list[dict]:
    decoder, objects, pos = json.JSONDecoder(), [], 0
    while (start := text.find("{", pos)) != -1:
        obj, pos = decoder.raw_decode(text, start)
        objects.append(obj)
    return objects


# --- pure plans -------------------------------------------------------------------------------------------------


def test_grid_coordinates_follow_megatron_order_tp_fastest_pp_slowest():
    # TP2 x PP2 x DP2: ranks 0-1 are one TP group, DP varies next, PP last.
    coords = [grid_coordinates(r, tp=2, dp=2) for r in range(8)]
    assert coords == [(0, 0, 0), (1, 0, 0), (0, 0, 1), (1, 0, 1), (0, 1, 0), (1, 1, 0), (0, 1, 1), (1, 1, 1)]


def test_plan_disaggregated_one_node_gives_each_rank_and_engine_its_bundle():
    plan = plan_placement(gpu_nodes(8), gpu_trainer(dp=4), sglang(4), colocate=False)
    assert [b.resources() for b in plan.bundles] == [{"CPU": 1.0, "GPU": 1.0}] * 8
    assert [r.bundle for r in plan.trainer_ranks] == [0, 1, 2, 3]
    assert [e.bundle for e in plan.engines] == [4, 5, 6, 7]
    assert [r.dp_rank for r in plan.trainer_ranks] == [0, 1, 2, 3]
    assert [(e.rank_offset, e.num_ranks) for e in plan.engines] == [(1, 1), (2, 1), (3, 1), (4, 1)]
    assert plan.weight_update_world_size == 5
    assert not plan.is_multi_node and not plan.warnings


def test_plan_rank_offsets_count_every_gpu_of_the_engines_before():
    plan = plan_placement(gpu_nodes(8), gpu_trainer(dp=2), sglang(3, tp_size=2), colocate=False)
    assert [e.rank_offset for e in plan.engines] == [1, 3, 5]
    assert plan.weight_update_world_size == 7


def test_plan_too_few_gpus_names_the_grid_the_count_and_the_keys():
    with pytest.raises(PlanError) as err:
        plan_placement(gpu_nodes(4), gpu_trainer(2, 2, 2), sglang(1), colocate=False)
    message = str(err.value)
    assert "trainer needs 8 GPUs as TP2×PP2×DP2" in message
    assert "cluster has 4" in message
    assert "trainer.*_parallel_size" in message and "cluster.num_gpus" in message
    assert "\n" not in message


def test_plan_keeps_each_tp_group_on_one_node():
    # 2 nodes x 3 GPUs: TP2 x DP2 cannot go rank by rank (0,1,2 | 3); each TP pair gets a node of its own.
    plan = plan_placement(gpu_nodes(3, 3), gpu_trainer(tp=2, dp=2), sglang(2), colocate=False)
    nodes = [r.node for r in plan.trainer_ranks]
    assert nodes[0] == nodes[1] and nodes[2] == nodes[3] and nodes[0] != nodes[2]
    assert plan.is_multi_node


def test_plan_tp_group_larger_than_any_node_is_infeasible():
    with pytest.raises(PlanError, match=r"TP group .* needs 8 GPUs .* largest node has 4 GPUs.*tensor_model_parallel"):
        plan_placement(gpu_nodes(4, 4, 4), gpu_trainer(tp=8), sglang(1), colocate=False)


def test_plan_places_each_engine_whole_on_one_node_or_refuses():
    plan = plan_placement(gpu_nodes(2, 4), gpu_trainer(dp=2), sglang(2, tp_size=2), colocate=False)
    # Engines (2 GPUs) are placed before the 1-GPU ranks: first fit, largest first.
    assert [e.node for e in plan.engines] == [0, 1]
    assert [r.node for r in plan.trainer_ranks] == [1, 1]
    # Enough GPUs in all (6), but after one TP pair and one engine each node has a single GPU left.
    with pytest.raises(PlanError, match=r"engine 1 needs 2 GPUs .* only this is left: node 0: 1 GPUs"):
        plan_placement(gpu_nodes(3, 3), gpu_trainer(tp=2), sglang(2, tp_size=2), colocate=False)


def test_plan_colocated_shares_each_bundle_between_rank_and_engine():
    plan = plan_placement(gpu_nodes(4), gpu_trainer(dp=4), sglang(2), colocate=True)
    assert len(plan.bundles) == 4
    assert [e.bundle for e in plan.engines] == [0, 1]
    assert {(r.num_gpus, r.num_cpus) for r in plan.trainer_ranks} == {(0.5, 0.5)}
    with pytest.raises(PlanError, match="cluster.colocate=false"):
        plan_placement(gpu_nodes(8), gpu_trainer(dp=2), sglang(2, tp_size=2), colocate=True)


def test_plan_rollout_only_reserves_the_engines_alone():
    plan = plan_placement(gpu_nodes(2), gpu_trainer(dp=4), sglang(2), colocate=False, with_trainer=False)
    assert not plan.trainer_ranks and [e.bundle for e in plan.engines] == [0, 1]


def test_plan_on_cpu_counts_engine_threads_and_names_the_cpu_keys():
    plan = plan_placement(
        described_nodes(ClusterConfig(num_cpus=3)), TrainerConfig(), EngineConfig(num_threads=2), colocate=False
    )
    assert [b.resources() for b in plan.bundles] == [{"CPU": 1.0}, {"CPU": 2.0}]
    with pytest.raises(PlanError, match=r"need 3 CPUs: 4 in all; cluster has 2.*engine.num_threads"):
        plan_placement(described_nodes(ClusterConfig()), TrainerConfig(), EngineConfig(num_threads=3), colocate=False)


def simulated(num_engines: int, per_process: int) -> EngineConfig:
    return EngineConfig(
        kind="simulated", num_engines=num_engines, simulated=SimulatedEngineConfig(engines_per_process=per_process)
    )


def test_plan_simulated_engines_share_one_bundle_per_process():
    nodes = described_nodes(ClusterConfig(num_cpus=3))
    plan = plan_placement(nodes, TrainerConfig(), simulated(130, 64), colocate=False, with_trainer=False)
    assert [b.resources() for b in plan.bundles] == [{"CPU": 1.0}] * 3  # engines 0-63, 64-127, 128-129
    assert len(plan.engines) == 130
    assert [e.process for e in plan.engines] == [0] * 64 + [1] * 64 + [2] * 2
    assert [e.bundle for e in plan.engines] == [e.process for e in plan.engines]
    # Native engines keep one bundle (and one process) each.
    native = plan_placement(nodes, TrainerConfig(), EngineConfig(num_engines=3), colocate=False, with_trainer=False)
    assert len(native.bundles) == 3 and [e.process for e in native.engines] == [0, 1, 2]


def test_plan_simulated_engines_that_do_not_fit_name_their_processes():
    nodes = described_nodes(ClusterConfig(num_cpus=2))
    with pytest.raises(PlanError, match=r"256 engine\(s\) in 4 process\(es\) need 4 CPUs"):
        plan_placement(nodes, TrainerConfig(), simulated(256, 64), colocate=False, with_trainer=False)
    plan = plan_placement(nodes, TrainerConfig(), simulated(256, 256), colocate=False)  # trainer rank + 1 process
    assert len(plan.bundles) == 2 and {e.bundle for e in plan.engines} == {1}


def test_plan_warns_when_loopback_services_meet_another_machine():
    plan = plan_placement(gpu_nodes(8, 8), gpu_trainer(tp=2, dp=4), sglang(8), colocate=False, buffer=BufferConfig())
    assert any("engine.host=127.0.0.1" in w for w in plan.warnings)
    # engine.host=null: each engine listens on its own node's IP, which the router reaches.
    per_node = dataclasses.replace(sglang(8), host=None)
    plan = plan_placement(gpu_nodes(8, 8), gpu_trainer(tp=2, dp=4), per_node, colocate=False, buffer=BufferConfig())
    assert not plan.warnings and {e.host for e in plan.engines} == {"node IP"}
    # Two Ray nodes of one machine (same IP) reach each other on loopback.
    same_host = [NodeSpec(i, 32, 8, node_id=f"n{i}", address="127.0.0.1", is_driver=i == 0) for i in range(2)]
    assert not plan_placement(same_host, gpu_trainer(tp=2, dp=4), sglang(8), colocate=False).warnings


def test_plan_json_has_nodes_bundles_and_every_actor():
    buffer = BufferConfig(url="redis://:secret@10.0.0.5:6379/0")
    plan = plan_placement(gpu_nodes(8, 8), gpu_trainer(tp=2, dp=2), sglang(2), colocate=False, buffer=buffer)
    data = json.loads(format_json(plan.to_json()))
    assert data == json.loads(json.dumps(plan.to_json()))
    assert set(data) >= {"nodes", "placement_group", "trainer", "engines", "rollout_worker", "router", "redis"}
    assert [n["planned_gpus"] for n in data["nodes"]] == [6.0, 0.0]
    assert data["placement_group"]["pinned_to_nodes"] is True
    assert data["placement_group"]["bundles"][0] == {"index": 0, "node": 0, "resources": {"CPU": 1.0, "GPU": 1.0}}
    assert {"rank", "tp_rank", "pp_rank", "dp_rank", "node", "bundle", "num_threads"} <= set(
        data["trainer"]["ranks"][3]
    )
    assert data["engines"][1]["rank_offset"] == 2 and data["weight_update_group"]["world_size"] == 3
    assert data["redis"]["node"] is None and "secret" not in json.dumps(data)


def test_described_cluster_is_for_planning_only():
    check_runnable(ClusterConfig(num_nodes=1))
    check_runnable(ClusterConfig(num_nodes=2, address="auto"))
    with pytest.raises(ConfigError, match="cluster.num_nodes=2 .* cluster.address"):
        check_runnable(ClusterConfig(num_nodes=2))


# --- the command ------------------------------------------------------------------------------------------------


def test_plan_command_on_this_machine_prints_one_json_object():
    result = run_plan("experiment=toy", "cluster.num_cpus=3", "engine.num_engines=2")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["source"] == "local" and data["name"] == "toy"
    assert [n["num_cpus"] for n in data["nodes"]] == [3]
    assert [e["bundle"] for e in data["engines"]] == [1, 2]


def test_plan_command_infeasible_exits_nonzero_with_one_line():
    result = run_plan(
        "trainer.tensor_model_parallel_size=2", "trainer.pipeline_model_parallel_size=2", "trainer.data_parallel_size=2"
    )
    assert result.returncode == 1 and not result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "trainer needs 8 CPUs as TP2×PP2×DP2" in lines[0] and "cluster has 2" in lines[0]


@pytest.mark.parametrize(
    ("preset", "small_cluster"),
    [
        ("qwen2.5_0.5b_math_1node", ["cluster.num_gpus=4"]),
        ("qwen2.5_1.5b_math_2nodes", ["cluster.address=null", "cluster.num_nodes=1"]),
    ],
)
def test_gpu_preset_fits_its_described_cluster_and_not_a_smaller_one(preset, small_cluster):
    described = ["cluster.address=null"]
    result = run_plan(f"experiment={preset}", *PRESET_PATHS, *described)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert sum(n["planned_gpus"] for n in data["nodes"]) == sum(n["num_gpus"] for n in data["nodes"])
    for group in range(0, len(ranks := data["trainer"]["ranks"]), data["trainer"]["tp"]):
        assert len({r["node"] for r in ranks[group : group + data["trainer"]["tp"]]}) == 1
    smaller = run_plan(f"experiment={preset}", *PRESET_PATHS, *small_cluster)
    assert smaller.returncode == 1 and "GPUs as TP" in smaller.stderr and "cluster has" in smaller.stderr


def test_gpu_preset_needs_the_model_path():
    result = run_plan("experiment=qwen2.5_0.5b_math_1node", "buffer.data.path=/d.jsonl")
    assert result.returncode == 1 and "model.path is not set" in result.stderr


def test_sweep_gives_each_job_its_own_run_dir():
    result = run_plan("-m", "experiment=toy", "trainer.lr=1e-5,2e-5")
    assert result.returncode == 0, result.stderr
    runs = json_objects(result.stdout)
    assert [r["name"] for r in runs] == ["toy_0", "toy_1"]
    assert [r["run_dir"] for r in runs] == ["outputs/toy_0", "outputs/toy_1"]


# --- a real 2-node Ray cluster ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_nodes():
    with loopback_ray_cluster(num_nodes=2, num_cpus_per_node=1) as cluster:
        yield cluster


def test_plan_command_reads_the_nodes_of_a_joined_cluster(two_nodes):
    result = run_plan(
        "cluster=ray", f"cluster.address={two_nodes.address}", "trainer.num_cpus_per_rank=1", env=two_nodes.env
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["source"] == "ray"
    assert sorted(n["node_id"] for n in data["nodes"]) == sorted(two_nodes.node_ids)
    assert [n["num_cpus"] for n in data["nodes"]] == [1.0, 1.0]
    assert data["nodes"][0]["is_driver"] and data["placement_group"]["pinned_to_nodes"]
    assert {data["trainer"]["ranks"][0]["node"], data["engines"][0]["node"]} == {0, 1}


def test_placement_pins_each_bundle_to_its_planned_node(two_nodes):
    # In a fresh process: Ray keeps the first cluster's token for the rest of a process's life.
    script = textwrap.dedent(
        f"""
        import json, ray
        from ray.util.placement_group import placement_group_table
        from slime_rl.config import ClusterConfig, EngineConfig, TrainerConfig
        from slime_rl.orchestration.cluster import ray_session
        from slime_rl.orchestration.placement import create_placement

        cluster = ClusterConfig(address={two_nodes.address!r})
        with ray_session(cluster):
            placement = create_placement(cluster, TrainerConfig(), EngineConfig(), timeout_s=60)
            try:
                placed = placement_group_table(placement.pg)["bundles_to_node_id"]
                placed = [placed[i] for i in sorted(placed)]
                print(json.dumps({{"planned": placement.plan.node_ids(), "placed": placed}}))
            finally:
                placement.remove()
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=two_nodes.env
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout.strip().splitlines()[-1])
    assert data["placed"] == data["planned"]
    assert sorted(data["placed"]) == sorted(two_nodes.node_ids)


def test_training_sweep_jobs_write_hydra_files_into_their_own_run_dirs(tmp_path):
    # Each job fails at once on its missing model (no service starts); Hydra has made its job dir by then.
    result = subprocess.run(
        [SLIME_RL, "train", "-m", "experiment=toy", "trainer.lr=1e-5,2e-5", "prepare.path=null"]
        + ["model.path=/nonexistent", f"output_dir={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 1 and "model.path='/nonexistent' does not exist" in result.stderr
    assert sorted(p.parent.name for p in tmp_path.glob("*/.hydra")) == ["toy_0", "toy_1"]
