"""`slime-rl` command line: train, rollout, buffer stats, export-hf.

`train` and `rollout` take Hydra overrides (`slime-rl train experiment=toy rollout.max_new_tokens=32`,
`slime-rl train --cfg job` prints the resolved config). Heavy imports happen inside each command.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from slime_rl.config import SlimeRLConfig, config_dir, register_configs, to_config
from slime_rl.errors import SlimeRLError

USAGE = """usage: slime-rl <command> [args]

commands:
  train [overrides...]      run RL training (Hydra overrides, e.g. experiment=toy mode=fully_async)
  rollout [overrides...]    run rollout alone: fill the buffer with scored groups, no trainer
  buffer stats              print a run's buffer counters and queue lengths
  export-hf                 write a checkpoint as a plain HuggingFace directory

`slime-rl train --cfg job` prints the resolved config; `slime-rl train --help` lists the config groups."""


def _hydra_command(argv: list[str], run: Callable[[SlimeRLConfig], None], name: str) -> None:
    """Run `run(cfg)` under `@hydra.main` with `argv` as the Hydra command line."""
    import hydra
    from omegaconf import DictConfig

    register_configs()

    @hydra.main(config_path=str(config_dir()), config_name="config", version_base="1.3")
    def entry(cfg: DictConfig) -> None:
        # Hydra would print our errors with a stack trace; a user needs only the message.
        try:
            run(to_config(cfg))
        except SlimeRLError as err:
            print(f"slime-rl {name}: error: {err}", file=sys.stderr)
            sys.exit(1)

    sys.argv = [f"slime-rl {name}", *argv]
    entry()


def _train(cfg: SlimeRLConfig) -> None:
    from slime_rl.orchestration.driver import run_training

    run_training(cfg)


def _rollout(cfg: SlimeRLConfig) -> None:
    from slime_rl.orchestration.driver import run_rollout_only

    run_rollout_only(cfg)


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
    except SlimeRLError as err:
        print(f"slime-rl {command}: error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
