"""`slime-rl` command line: train, rollout, buffer stats, export-hf.

`train` and `rollout` take Hydra overrides (`slime-rl train experiment=toy rollout.max_new_tokens=32`,
`slime-rl train --cfg job` prints the resolved config). Heavy imports happen inside each command.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from slime_rl.config import SlimeRLConfig, config_dir, register_configs, to_config
from slime_rl.config.model import check_model_path
from slime_rl.errors import SlimeRLError

FULL_ERROR_ENV = "HYDRA_FULL_ERROR"  # "1": user errors raise with their traceback instead of one line

USAGE = """usage: slime-rl <command> [args]

commands:
  train [overrides...]      run RL training (Hydra overrides, e.g. experiment=toy mode=fully_async)
  rollout [overrides...]    run rollout alone: fill the buffer with scored groups, no trainer
  buffer stats              print a run's buffer counters and queue lengths
  export-hf                 write a checkpoint as a plain HuggingFace directory

`slime-rl train --cfg job` prints the resolved config; `slime-rl train --help` lists the config groups."""


def _hydra_command(argv: list[str], run: Callable[[SlimeRLConfig], None], name: str) -> None:
    """Run `run(cfg)` under `@hydra.main` with `argv` as the Hydra command line; errors propagate."""
    import hydra
    from omegaconf import DictConfig

    register_configs()
    failures: list[SlimeRLError] = []

    @hydra.main(config_path=str(config_dir()), config_name="config", version_base="1.3")
    def entry(cfg: DictConfig) -> None:
        try:
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


def _check_model(cfg: SlimeRLConfig) -> None:
    # The driver checks again once the run is prepared; checking here too fails a user's typo in well under a
    # second instead of after the driver's imports. The toy experiment makes its model when the run starts.
    if not cfg.toy.enabled:
        check_model_path(cfg.model)


def _train(cfg: SlimeRLConfig) -> None:
    _check_model(cfg)
    from slime_rl.orchestration.driver import run_training

    run_training(cfg)


def _rollout(cfg: SlimeRLConfig) -> None:
    _check_model(cfg)
    from slime_rl.orchestration.driver import run_rollout_only

    run_rollout_only(cfg)


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
