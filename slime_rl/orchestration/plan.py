"""The placement plan: which node and bundle each actor of a run gets, computed without Ray.

Pure: nodes and configs in, a `ClusterPlan` out. `slime-rl plan` prints it; `placement.create_placement`
reserves exactly its bundles (pinned to their planned nodes on a multi-node cluster), so what `plan`
shows is what a run gets. It does not start, join or ask Ray anything; `placement.read_ray_nodes` does.

Rules. Disaggregated (default): one bundle per trainer rank, then one per engine host. Colocated: bundle i
is shared by trainer rank i and engine host i, each asking half of it. A trainer tensor-parallel group (consecutive
ranks, Megatron order tp-cp-ep-dp-pp) stays on one node; an engine is whole on one node. An engine bundle
holds one engine host (one Ray actor, one server process): one engine for native and SGLang, up to
`engine.simulated.engines_per_process` engines for kind=simulated, which share their process's bundle.
Larger units are placed first, each on the first node with room (first fit); a plan that does not fit
raises `PlanError` naming what is missing and the keys to change. The router and an embedded Redis run in
the driver's process (its node); the rollout worker asks for no CPU and Ray places it, usually on the
driver's node.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

from slime_rl.config.buffer import BufferConfig
from slime_rl.config.cluster import ClusterConfig
from slime_rl.config.engine import EngineConfig
from slime_rl.config.trainer import TrainerConfig
from slime_rl.errors import ConfigError

EPS = 1e-9  # slack for fractional resources (Ray's are fixed-point with 4 decimals)
EMPTY_BUNDLE_CPUS = 0.01  # Ray rejects an empty bundle; a CPU-less, GPU-less actor gets this much


class PlanError(ConfigError):
    """The run does not fit the cluster; the message names what is missing and the keys to change."""


@dataclass(frozen=True)
class NodeSpec:
    """One node of the cluster and its total logical resources."""

    index: int
    num_cpus: float
    num_gpus: float
    node_id: str | None = None  # Ray node id (hex) of a joined cluster; None for a local or described one
    address: str | None = None  # the node's IP on a joined cluster
    is_driver: bool = False  # the node the driver (and so the router and an embedded Redis) runs on


@dataclass(frozen=True)
class Bundle:
    """One placement-group bundle and the node it is planned on."""

    index: int
    node: int
    num_cpus: float
    num_gpus: float

    def resources(self) -> dict[str, float]:
        """The bundle as Ray wants it: no zero entries, never empty."""
        res = {k: v for k, v in (("CPU", self.num_cpus), ("GPU", self.num_gpus)) if v > 0}
        return res or {"CPU": EMPTY_BUNDLE_CPUS}


@dataclass(frozen=True)
class TrainerRankPlan:
    """Trainer rank `rank`: its grid coordinates and what its actor asks of its bundle."""

    rank: int
    tp_rank: int
    pp_rank: int
    dp_rank: int
    node: int
    bundle: int
    num_cpus: float
    num_gpus: float
    num_threads: int  # torch threads on CPU (trainer.num_cpus_per_rank)


@dataclass(frozen=True)
class EnginePlan:
    """Engine `index`: its bundle and its ranks in the trainer's weight-update group."""

    index: int
    node: int
    bundle: int
    num_cpus: float
    num_gpus: float
    num_threads: int  # engine.num_threads
    host: str  # the engine listens on host:<a free port picked at start>; "node IP" for engine.host=null
    rank_offset: int  # its first rank in the weight-update group (the trainer is rank 0)
    num_ranks: int  # ranks it holds there: one per GPU (SGLang TP workers), one on CPU
    process: int  # its engine host (Ray actor and server process); simulated engines share one per bundle


@dataclass(frozen=True)
class ServicePlan:
    """A service outside the placement group: it takes no bundle."""

    name: str  # rollout_worker | router | redis
    node: int | None  # None: not on the cluster (an external Redis)
    where: str  # how it gets there, in words


@dataclass(frozen=True)
class ClusterPlan:
    source: str  # local | described | ray (a joined cluster, read from Ray)
    colocate: bool
    nodes: list[NodeSpec]
    bundles: list[Bundle]
    trainer: dict[str, int]  # tp, pp, dp, world_size
    trainer_ranks: list[TrainerRankPlan]
    engines: list[EnginePlan]
    weight_update_world_size: int  # 1 (the trainer's rank 0) + every engine's ranks
    services: list[ServicePlan] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # the plan fits, but the run may not work as configured

    @property
    def is_multi_node(self) -> bool:
        return len(self.nodes) > 1

    def node_ids(self) -> list[str | None]:
        """The Ray node id each bundle is planned on."""
        return [self.nodes[b.node].node_id for b in self.bundles]

    def to_json(self) -> dict[str, Any]:
        """The plan as one JSON-able object (`slime-rl plan` prints it)."""
        used = {n.index: [0.0, 0.0] for n in self.nodes}
        for b in self.bundles:
            used[b.node][0] += b.num_cpus
            used[b.node][1] += b.num_gpus
        return {
            "source": self.source,
            "colocate": self.colocate,
            "nodes": [
                {**asdict(n), "planned_cpus": round(used[n.index][0], 4), "planned_gpus": round(used[n.index][1], 4)}
                for n in self.nodes
            ],
            "placement_group": {
                "strategy": "PACK",
                "pinned_to_nodes": self.is_multi_node,
                "bundles": [{"index": b.index, "node": b.node, "resources": b.resources()} for b in self.bundles],
            },
            "trainer": {**self.trainer, "ranks": [asdict(r) for r in self.trainer_ranks]},
            "engines": [asdict(e) for e in self.engines],
            "weight_update_group": {"world_size": self.weight_update_world_size, "rank_0": "trainer rank 0"},
            **{s.name: {"node": s.node, "bundle": None, "where": s.where} for s in self.services},
            "warnings": self.warnings,
        }


def engines_per_host(engine: EngineConfig) -> int:
    """Engines one engine host serves (one Ray actor, one server process, one bundle): up to
    `engine.simulated.engines_per_process` for kind=simulated, one for every other kind."""
    return engine.simulated.engines_per_process if engine.kind == "simulated" else 1


def engine_hosts(num_engines: int, per_host: int) -> list[list[int]]:
    """The engines of each engine host, in order: host h serves engines h*k .. h*k+k-1 (k = `per_host`)."""
    return [list(range(start, min(start + per_host, num_engines))) for start in range(0, num_engines, per_host)]


def _host_text(engines: list[int]) -> str:
    return f"engine {engines[0]}" if len(engines) == 1 else f"engines {engines[0]}-{engines[-1]} (one process)"


def engine_gpus(engine: EngineConfig) -> int:
    """GPUs one engine holds: none on CPU, else SGLang's tensor-parallel size."""
    return 0 if engine.device == "cpu" else int(engine.sglang.get("tp_size", 1))


def grid_coordinates(rank: int, tp: int, dp: int) -> tuple[int, int, int]:
    """(tp_rank, pp_rank, dp_rank) of `rank` in Megatron's default order tp-cp-ep-dp-pp (TP varies fastest)."""
    return rank % tp, rank // (tp * dp), (rank // tp) % dp


def described_nodes(cluster: ClusterConfig) -> list[NodeSpec]:
    """The nodes `cluster.num_nodes` x (num_cpus, num_gpus) of a local or described cluster; node 0 drives."""
    return [NodeSpec(i, cluster.num_cpus, cluster.num_gpus, is_driver=i == 0) for i in range(cluster.num_nodes)]


@dataclass
class _Unit:
    """Bundles that must share a node: a TP group's, or one engine's."""

    what: str  # for messages: "a TP group of trainer ranks 0-1", "engine 3"
    bundles: list[int]
    num_cpus: float
    num_gpus: float


@dataclass
class _Demand:
    bundles: list[tuple[float, float]]  # (cpus, gpus) per bundle, in bundle order
    units: list[_Unit]
    trainer_slot: tuple[float, float]  # what one trainer rank's actor asks
    engine_slot: tuple[float, float]
    engine_bundle: list[int]  # bundle of engine i


def _disaggregated(world: int, tp: int, trainer: TrainerConfig, engine: EngineConfig) -> _Demand:
    tc, tg = float(trainer.num_cpus_per_rank), float(trainer.num_gpus_per_rank)
    ec, eg = float(engine.num_threads), float(engine_gpus(engine))
    hosts = engine_hosts(engine.num_engines, engines_per_host(engine))
    bundles = [(tc, tg)] * world + [(ec, eg)] * len(hosts)
    units = [
        _Unit(f"a TP group (trainer ranks {s}-{s + tp - 1})", list(range(s, s + tp)), tc * tp, tg * tp)
        for s in range(0, world, tp)
    ]
    units += [_Unit(_host_text(members), [world + h], ec, eg) for h, members in enumerate(hosts)]
    engine_bundle = [world + h for h, members in enumerate(hosts) for _ in members]
    return _Demand(bundles, units, (tc, tg), (ec, eg), engine_bundle)


def _colocated(world: int, tp: int, trainer: TrainerConfig, engine: EngineConfig) -> _Demand:
    tg, eg = trainer.num_gpus_per_rank, engine_gpus(engine)
    if max(tg, eg) > 1:
        raise PlanError(
            f"colocated actors share one device each, but trainer.num_gpus_per_rank={tg} and each engine holds {eg} "
            "GPU(s) (engine.sglang.tp_size); set both to 1, or cluster.colocate=false"
        )
    cpus, gpus = float(max(trainer.num_cpus_per_rank, engine.num_threads)), float(max(tg, eg))
    hosts = engine_hosts(engine.num_engines, engines_per_host(engine))
    n = max(world, len(hosts))
    units = [
        _Unit(
            f"a TP group (trainer ranks {s}-{s + tp - 1}, with their engines)",
            list(range(s, s + tp)),
            cpus * tp,
            gpus * tp,
        )
        for s in range(0, world, tp)
    ]
    units += [_Unit(_host_text(hosts[h]), [h], cpus, gpus) for h in range(world, n)]
    half = (cpus / 2, gpus / 2)
    return _Demand([(cpus, gpus)] * n, units, half, half, [h for h, members in enumerate(hosts) for _ in members])


def _grid_text(trainer: TrainerConfig) -> str:
    t = trainer
    return f"TP{t.tensor_model_parallel_size}×PP{t.pipeline_model_parallel_size}×DP{t.data_parallel_size}"


def _nodes_text(nodes: list[NodeSpec], kind: str) -> str:
    values = [n.num_gpus if kind == "GPU" else n.num_cpus for n in nodes]
    if len(set(values)) == 1:
        return f"{len(nodes)} node(s) × {values[0]:g}"
    return " + ".join(f"{v:g}" for v in values)


def _fix_keys(source: str, kind: str) -> str:
    if source == "ray":
        return f"add {kind}s to the Ray cluster (more nodes, or `ray start --num-{kind.lower()}s`)"
    return f"raise cluster.num_{kind.lower()}s (per node) or cluster.num_nodes"


def _check_totals(
    demand: _Demand, nodes: list[NodeSpec], world: int, trainer: TrainerConfig, engine: EngineConfig, *, source: str
) -> None:
    for kind, pos in (("GPU", 1), ("CPU", 0)):
        have = sum(n.num_gpus if kind == "GPU" else n.num_cpus for n in nodes)
        need = sum(b[pos] for b in demand.bundles)
        if need <= have + EPS:
            continue
        parts = []
        if world:
            trainer_need = sum(b[pos] for b in demand.bundles[:world])
            key = "num_gpus_per_rank" if kind == "GPU" else "num_cpus_per_rank"
            per_rank = getattr(trainer, key)
            parts.append(f"trainer needs {trainer_need:g} {kind}s as {_grid_text(trainer)} (trainer.{key}={per_rank})")
        engine_need = need - sum(b[pos] for b in demand.bundles[:world])
        if engine_need > EPS:
            num_hosts = len(set(demand.engine_bundle))
            in_hosts = f" in {num_hosts} process(es)" if num_hosts != len(demand.engine_bundle) else ""
            parts.append(f"{len(demand.engine_bundle)} engine(s){in_hosts} need {engine_need:g} {kind}s")
        keys = "trainer.*_parallel_size or engine.num_engines" if world else "engine.num_engines"
        if kind == "GPU":
            keys += " (or engine.sglang.tp_size)"
        else:
            keys += ", trainer.num_cpus_per_rank or engine.num_threads"
            if engine.kind == "simulated":
                keys += " (or raise engine.simulated.engines_per_process)"
        raise PlanError(
            f"{' and '.join(parts)}: {need:g} in all; cluster has {have:g} ({_nodes_text(nodes, kind)}). "
            f"Lower {keys}, or {_fix_keys(source, kind)}"
        )


def _assign_nodes(demand: _Demand, nodes: list[NodeSpec], *, source: str) -> list[int]:
    """First fit, largest units first (stable); returns the node of each bundle."""
    free = [[n.num_cpus, n.num_gpus] for n in nodes]
    node_of = [-1] * len(demand.bundles)
    order = sorted(range(len(demand.units)), key=lambda i: (-demand.units[i].num_gpus, -demand.units[i].num_cpus))
    for i in order:
        unit = demand.units[i]
        for n, room in enumerate(free):
            if unit.num_cpus <= room[0] + EPS and unit.num_gpus <= room[1] + EPS:
                room[0] -= unit.num_cpus
                room[1] -= unit.num_gpus
                for b in unit.bundles:
                    node_of[b] = n
                break
        else:
            need = f"{unit.num_gpus:g} GPUs and {unit.num_cpus:g} CPUs on one node"
            largest = max(nodes, key=lambda n: (n.num_gpus, n.num_cpus))
            if unit.num_gpus > largest.num_gpus + EPS or unit.num_cpus > largest.num_cpus + EPS:
                where = f"the largest node has {largest.num_gpus:g} GPUs and {largest.num_cpus:g} CPUs"
            else:
                left = ", ".join(f"node {k}: {r[1]:g} GPUs/{r[0]:g} CPUs" for k, r in enumerate(free))
                where = f"after the larger units only this is left: {left}"
            keys = (
                "trainer.tensor_model_parallel_size (a TP group stays on one node)"
                if unit.what.startswith("a TP group")
                else "engine.sglang.tp_size or engine.num_threads (an engine's process stays on one node)"
            )
            raise PlanError(f"{unit.what} needs {need}; {where}. Lower {keys}, or {_fix_keys(source, 'GPU')}")
    return node_of


def redacted_url(url: str) -> str:
    """`url` without its user and password."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}{parts.path}"


def _services(nodes: list[NodeSpec], engine: EngineConfig, buffer: BufferConfig | None) -> list[ServicePlan]:
    driver = next((n.index for n in nodes if n.is_driver), 0)
    services = [
        ServicePlan(
            "rollout_worker", driver, "Ray actor with num_cpus=0, outside the placement group, on the driver's node"
        ),
        ServicePlan("router", driver, f"sglang-router process of the driver, on {engine.host or 'its node IP'}"),
    ]
    if buffer is not None and buffer.url:
        services.append(ServicePlan("redis", None, f"external server buffer.url={redacted_url(buffer.url)}"))
    else:
        host = buffer.host if buffer is not None else "127.0.0.1"
        services.append(ServicePlan("redis", driver, f"embedded server of the driver, on {host}, with a password"))
    return services


def _is_loopback(host: str) -> bool:
    return host == "localhost" or host.startswith("127.")


def _reachability_warnings(
    nodes: list[NodeSpec],
    node_of: list[int],
    demand: _Demand,
    world: int,
    engine: EngineConfig,
    buffer: BufferConfig | None,
) -> list[str]:
    """Loopback-bound services that actors planned on another machine than the driver's could not reach."""
    driver = next((n for n in nodes if n.is_driver), nodes[0])
    # A node with the driver's IP is the same machine (several Ray nodes on one host); unknown IPs may differ.
    remote = {n.index for n in nodes if n.index != driver.index and (n.address is None or n.address != driver.address)}
    warnings = []
    engine_nodes = sorted({node_of[b] for b in demand.engine_bundle} & remote)
    if engine_nodes and engine.host is not None and _is_loopback(engine.host):
        warnings.append(
            f"engines on node(s) {engine_nodes} listen on engine.host={engine.host}, which the router on the driver's "
            "node cannot reach from another machine; set engine.host=null (each engine on its node's IP)"
        )
    trainer_nodes = sorted({node_of[r] for r in range(world)} & remote)
    embedded_host = buffer.host if buffer is not None and not buffer.url else None
    if trainer_nodes and embedded_host is not None and _is_loopback(embedded_host):
        warnings.append(
            f"trainer ranks on node(s) {trainer_nodes} read the buffer, but the embedded Redis listens on "
            f"buffer.host={embedded_host} of the driver's machine; set buffer.url to a Redis every node can reach"
        )
    return warnings


def plan_placement(
    nodes: list[NodeSpec],
    trainer: TrainerConfig,
    engine: EngineConfig,
    *,
    colocate: bool,
    with_trainer: bool = True,
    buffer: BufferConfig | None = None,
    source: str = "local",
) -> ClusterPlan:
    """Plan every actor of a run on `nodes`; raises `PlanError` if the run does not fit.

    `with_trainer=False` (a rollout-only run) plans the engines alone.
    """
    if not nodes:
        raise PlanError("the cluster has no alive node; start Ray (`ray start --head`) or check cluster.address")
    tp, pp, dp = trainer.tensor_model_parallel_size, trainer.pipeline_model_parallel_size, trainer.data_parallel_size
    world = trainer.world_size if with_trainer else 0
    demand = (_colocated if colocate else _disaggregated)(world, tp, trainer, engine)
    _check_totals(demand, nodes, world, trainer, engine, source=source)
    node_of = _assign_nodes(demand, nodes, source=source)
    bundles = [Bundle(i, node_of[i], c, g) for i, (c, g) in enumerate(demand.bundles)]
    ranks = [
        TrainerRankPlan(r, *grid_coordinates(r, tp, dp), node_of[r], r, *demand.trainer_slot, trainer.num_cpus_per_rank)
        for r in range(world)
    ]
    engines, offset = [], 1
    hosts = engine_hosts(engine.num_engines, engines_per_host(engine))
    process_of = [h for h, members in enumerate(hosts) for _ in members]
    for i, b in enumerate(demand.engine_bundle):
        num_ranks = max(1, engine_gpus(engine))
        where = (node_of[b], b, *demand.engine_slot, engine.num_threads, engine.host or "node IP")
        engines.append(EnginePlan(i, *where, offset, num_ranks, process=process_of[i]))
        offset += num_ranks
    return ClusterPlan(
        source=source,
        colocate=colocate,
        nodes=list(nodes),
        bundles=bundles,
        trainer={"tp": tp, "pp": pp, "dp": dp, "world_size": world},
        trainer_ranks=ranks,
        engines=engines,
        weight_update_world_size=offset,
        services=_services(list(nodes), engine, buffer),
        warnings=_reachability_warnings(list(nodes), node_of, demand, world, engine, buffer),
    )


def check_runnable(cluster: ClusterConfig) -> None:
    """A run needs a real cluster: a local Ray is one node, so several described nodes only make sense to `plan`."""
    if cluster.address is None and cluster.num_nodes > 1:
        raise ConfigError(
            f"cluster.num_nodes={cluster.num_nodes} describes a cluster for `slime-rl plan`, but a local Ray is one "
            "node; to run on several nodes join their Ray cluster (cluster=ray cluster.address=<head:port>), or "
            "set cluster.num_nodes=1"
        )


def format_json(obj: Any, indent: int = 2, width: int = 120, _level: int = 0) -> str:
    """JSON with each flat object (a node, a rank, an engine) or any that fits in `width` columns on one line."""
    import json

    pad, inner = " " * (indent * _level), " " * (indent * (_level + 1))
    one_line = json.dumps(obj)
    if not isinstance(obj, dict | list) or not obj:
        return one_line
    items = obj.values() if isinstance(obj, dict) else obj
    is_flat = not any(isinstance(v, dict | list) for v in items)
    if _level and (is_flat or len(pad) + len(one_line) <= width):
        return one_line
    if isinstance(obj, dict):
        body = [f"{inner}{json.dumps(k)}: {format_json(v, indent, width, _level + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(body) + f"\n{pad}}}"
    body = [f"{inner}{format_json(v, indent, width, _level + 1)}" for v in obj]
    return "[\n" + ",\n".join(body) + f"\n{pad}]"
