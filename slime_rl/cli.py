"""`slime-rl` command line: train, rollout, profile-rollout, plan, doctor, buffer stats, export-hf.

`train`, `rollout` and `plan` take Hydra overrides (`slime-rl train experiment=toy rollout.max_new_tokens=32`,
`slime-rl train --cfg job` prints the resolved config). With `-m` (a Hydra multirun) each job's `name` gets
`_<job number>` appended, so each job has its own run dir and buffer namespace. Heavy imports happen
inside each command.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from slime_rl.config import SlimeRLConfig, config_dir, load_config, register_configs, to_config
from slime_rl.config.model import check_model_path
from slime_rl.errors import SlimeRLError
from slime_rl.orchestration.plan import check_runnable

FULL_ERROR_ENV = "HYDRA_FULL_ERROR"  # "1": user errors raise with their traceback instead of one line

USAGE = """usage: slime-rl <command> [args]

commands:
  train [overrides...]      run RL training (Hydra overrides, e.g. experiment=toy mode=fully_async)
  rollout [overrides...]    run rollout alone: fill the buffer with scored groups, no trainer
  profile-rollout [overrides...]  profile the rollout side: profile.json, trace.json, report.html in the run dir
                            (profile.sweep='["rollout=april","rollout=default"]' or -m compares settings)
  profile-rollout --compare DIR...  compare profiled run dirs: sweep.json, sweep_report.html (--out DIR)
  plan [overrides...]       print where every actor of the run would go (JSON), starting nothing
  doctor [--json] [overrides...]  check versions, GPUs, Redis and Ray nodes; print each problem with its fix
  buffer stats              print a run's buffer counters and queue lengths
  export-hf                 write a checkpoint as a plain HuggingFace directory

`slime-rl train --cfg job` prints the resolved config; `slime-rl train --help` lists the config groups;
`slime-rl train -m trainer.lr=1e-5,3e-5` runs a sweep, one run dir per job ({output_dir}/{name}_<job number>)."""


def _hydra_command(argv: list[str], run: Callable[[SlimeRLConfig], None], name: str) -> None:
    """Run `run(cfg)` under `@hydra.main` with `argv` as the Hydra command line; errors propagate."""
    import hydra
    from omegaconf import DictConfig

    register_configs()
    failures: list[SlimeRLError] = []

    @hydra.main(config_path=str(config_dir()), config_name="config", version_base="1.3")
    def entry(cfg: DictConfig) -> None:
        try:
            if (job_num := multirun_job_num()) is not None:
                cfg.name = f"{cfg.name}_{job_num}"  # every job of a sweep gets its own run dir and buffer keys
            run(to_config(cfg))
        except SlimeRLError as err:  # raised through Hydra, it would print a line of its own first
            failures.append(err)

    sys.argv = [f"slime-rl {name}", *argv]
    # Without it Hydra prints composition errors itself, over several lines, and exits; with it they reach `main`.
    previous = os.environ.get(FULL_ERROR_ENV)
    os.environ[FULL_ERROR_ENV] = "1"
    try:
        entry()
    finally:
        if previous is None:
            del os.environ[FULL_ERROR_ENV]
        else:
            os.environ[FULL_ERROR_ENV] = previous
    if failures:
        raise failures[0]  # with its original traceback


def multirun_job_num() -> int | None:
    """The job number inside a Hydra multirun (`-m`), else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    return int(hydra_cfg.job.num) if hydra_cfg.mode == RunMode.MULTIRUN else None


def _check_model(cfg: SlimeRLConfig) -> None:
    # The driver checks again once the run is prepared; checking here too fails a user's typo in well under a
    # second instead of after the driver's imports. An experiment's `prepare` hook (experiment=toy's) may make
    # its model when the run starts.
    if cfg.prepare.path is None:
        check_model_path(cfg.model)


def _train(cfg: SlimeRLConfig) -> None:
    _check_model(cfg)
    check_runnable(cfg.cluster)
    from slime_rl.orchestration.driver import run_training

    run_training(cfg)


def _rollout(cfg: SlimeRLConfig) -> None:
    _check_model(cfg)
    check_runnable(cfg.cluster)
    from slime_rl.orchestration.driver import run_rollout_only

    run_rollout_only(cfg)


def _profile_rollout(argv: list[str]) -> None:
    if argv and argv[0] == "--compare":
        parser = argparse.ArgumentParser(prog="slime-rl profile-rollout --compare")
        parser.add_argument("run_dirs", nargs="+", type=Path, help="run dirs holding profile.json")
        parser.add_argument("--out", type=Path, help="where sweep.json and sweep_report.html go (default: cwd)")
        args = parser.parse_args(argv[1:])
        from slime_rl.profiling.sweep import write_comparison

        print(write_comparison(args.run_dirs, args.out or Path.cwd()))
        return
    from slime_rl.orchestration.profile_run import run_profile, run_sweep

    if any(arg.startswith("profile.sweep=") for arg in argv):  # composes each setting itself, outside Hydra's app
        cfg = load_config(argv)
        _check_model(cfg)
        check_runnable(cfg.cluster)
        _, out_dir = run_sweep(cfg, argv)
        print(out_dir / "sweep_report.html")
        return
    run_dirs: list[Path] = []

    def profile(cfg: SlimeRLConfig) -> None:
        _check_model(cfg)
        check_runnable(cfg.cluster)
        run_dirs.append(run_profile(cfg))

    _hydra_command(argv, profile, "profile-rollout")
    for run_dir in run_dirs:
        print(run_dir / "report.html")
    if len(run_dirs) > 1:  # a Hydra -m sweep: compare its jobs ({name}_{k}) in {output_dir}/{name}_sweep
        from slime_rl.profiling.sweep import write_comparison

        first = run_dirs[0]
        print(write_comparison(run_dirs, first.parent / f"{first.name.rsplit('_', 1)[0]}_sweep"))


def _plan(cfg: SlimeRLConfig) -> None:
    from slime_rl.orchestration.placement import plan_cluster
    from slime_rl.orchestration.plan import format_json

    plan = plan_cluster(cfg.cluster, cfg.trainer, cfg.engine, cfg.buffer)
    for warning in plan.warnings:
        print(f"slime-rl plan: warning: {warning}", file=sys.stderr)
    print(format_json({"name": cfg.name, "run_dir": str(cfg.run_dir), **plan.to_json()}), flush=True)


def _plan_command(argv: list[str]) -> None:
    # `plan` leaves no Hydra output behind (its job dirs go to a scratch dir), and Hydra's own log lines (a
    # multirun's "Launching 2 jobs") would break the JSON on stdout.
    with tempfile.TemporaryDirectory(prefix="slime-rl-plan-") as scratch:
        hydra_args = [
            "hydra.output_subdir=null",
            "hydra/hydra_logging=disabled",
            f"hydra.run.dir={scratch}",
            f"hydra.sweep.dir={scratch}",
        ]
        # Before the user's first override (after flags such as -m), so that the user's own hydra.* ones win.
        at = next((i for i, arg in enumerate(argv) if "=" in arg and not arg.startswith("-")), len(argv))
        _hydra_command([*argv[:at], *hydra_args, *argv[at:]], _plan, "plan")


def _doctor(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="slime-rl doctor", description="Check the environment a run needs; exits 1 if a problem is fatal."
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. cluster=ray buffer.url=redis://...")
    args = parser.parse_args(argv)
    import json

    from rich.console import Console

    from slime_rl.orchestration.doctor import render_table, run_checks

    report = run_checks(load_config(args.overrides))
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        Console().print(render_table(report))
    if not report.ok:
        sys.exit(1)


def error_line(err: Exception) -> str:
    """A user error as one line: our message, or Hydra's first line with the key and reason OmegaConf gives."""
    # An error raised inside a Ray task or actor arrives wrapped; its `cause` is the original.
    while isinstance(inner := getattr(err, "cause", None), SlimeRLError):
        err = inner
    cause = err.__cause__
    if isinstance(cause, MissingMandatoryValue) and cause.full_key:
        return f"{cause.full_key} is not set; add {cause.full_key}=<value> to the command line"
    if isinstance(err, SlimeRLError) and not isinstance(cause, OmegaConfBaseException):
        return str(err)  # written for users; a ServiceError may append a log tail on purpose
    lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
    headline = lines[0].rstrip(".")
    if isinstance(cause, OmegaConfBaseException):
        reason = str(cause).strip().splitlines()[0]
        key = f"{cause.full_key}: " if cause.full_key and cause.full_key not in headline else ""
        return f"{headline}: {key}{reason}"
    if isinstance(err, MissingConfigException) and err.options:
        return f"{headline}; choose one of {sorted(err.options)}"
    if isinstance(err, OverrideParseException) and len(lines) > 1:
        return f"{headline}: {lines[1]}"
    return headline


def _buffer(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="slime-rl buffer", description="Inspect a run's Redis buffer.")
    parser.add_argument("action", choices=["stats"])
    parser.add_argument("--url", required=True, help="redis://[:password@]host:port/db of the run's buffer")
    parser.add_argument("--run-id", required=True, help="the run's buffer namespace (buffer.run_id or name)")
    args = parser.parse_args(argv)
    from rich.console import Console

    from slime_rl.buffer.stats import buffer_stats, format_stats

    Console().print(format_stats(buffer_stats(args.url, args.run_id), args.run_id))


def _export_hf(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="slime-rl export-hf", description="Checkpoint -> HuggingFace directory.")
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory written by training")
    parser.add_argument("--out", required=True, help="output HuggingFace model directory")
    args = parser.parse_args(argv)
    from slime_rl.trainer.checkpoint import export_checkpoint_to_hf

    export_checkpoint_to_hf(args.checkpoint, args.out)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    command, rest = argv[0], argv[1:]
    show_traceback = os.environ.get(FULL_ERROR_ENV) == "1"
    try:
        if command == "train":
            _hydra_command(rest, _train, "train")
        elif command == "rollout":
            _hydra_command(rest, _rollout, "rollout")
        elif command == "profile-rollout":
            _profile_rollout(rest)
        elif command == "plan":
            _plan_command(rest)
        elif command == "doctor":
            _doctor(rest)
        elif command == "buffer":
            _buffer(rest)
        elif command == "export-hf":
            _export_hf(rest)
        else:
            print(f"slime-rl: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
            sys.exit(2)
    except (SlimeRLError, HydraException) as err:
        if show_traceback:
            raise
        print(f"slime-rl {command}: error: {error_line(err)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
