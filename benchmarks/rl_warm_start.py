"""RL after SFT, continuing in one run or starting from the SFT checkpoint: the toy's eval accuracy curves.

Variants, each `slime-rl train experiment=toy` in its own process and run directory (same seed, so the same
toy model, data and eval set):
- A `continue`: the SFT stage, then RL in the same run (the baseline). Its SFT checkpoint is step 0.
- B `fresh_optimizer`: RL only, from A's step-0 checkpoint's weights with fresh Adam moments
  (`trainer.init_checkpoint=... trainer.load_optimizer=false`).
- C `init_checkpoint`: RL only, from A's step-0 checkpoint with its Adam state (`trainer.load_optimizer=true`).
- D `fresh_optimizer_warmup`: B with `trainer.lr_warmup_steps` of linear LR warm-up.

Prints one JSON object: per variant the eval accuracy curve (step, accuracy), the final and mean accuracy,
the first step reaching half of A's final accuracy, and their ratios against A; writes it and a PNG of the
curves to `--out-dir`. Never asserts.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from slime_rl.observability.environment import git_commit, hardware_info
from slime_rl.observability.metrics import read_metrics


def run_variant(name: str, out_dir: Path, overrides: list[str]) -> dict:
    """Run one variant (or reuse its finished run directory) and read its eval accuracy curve."""
    run_dir = out_dir / name
    wall_s = None
    if not (run_dir / "summary.json").is_file():
        argv = [sys.executable, "-m", "slime_rl.cli", "train", "experiment=toy", f"name={name}"]
        argv += [f"output_dir={out_dir}", "buffer.appendonly=false", *overrides]
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        wall_s = time.perf_counter() - start
    curve = [(r["step"], r["eval/accuracy"]) for r in read_metrics(run_dir / "metrics.jsonl") if "eval/accuracy" in r]
    rl = [acc for step, acc in curve if step > 0]
    return {
        "overrides": overrides,
        "curve": curve,
        "final_accuracy": curve[-1][1],
        "mean_accuracy": sum(rl) / len(rl),
        "wall_s": wall_s,
    }


def first_step_reaching(curve: list[tuple[int, float]], threshold: float) -> int | None:
    return next((step for step, acc in curve if step > 0 and acc >= threshold), None)


def ratio(value: float, baseline: float | None) -> float | None:
    return value / baseline if baseline else None


def plot(results: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, result in results.items():
        steps, accuracy = zip(*result["curve"], strict=True)
        ax.plot(steps, accuracy, marker="o", label=name)
    ax.set_xlabel("RL step")
    ax.set_ylabel("held-out greedy accuracy")
    ax.set_title("toy: RL after SFT, continued vs from the SFT checkpoint")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=Path("outputs/rl_warm_start"))
    parser.add_argument("--warmup-steps", type=int, default=5, help="variant D's trainer.lr_warmup_steps (0 = skip D)")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run (e.g. mode.num_steps=20)")
    args = parser.parse_args()
    out_dir = args.out_dir.resolve()
    sft_checkpoint = out_dir / "continue" / "checkpoints" / "step_00000000"
    from_sft = ["sft.steps=0", f"trainer.init_checkpoint={sft_checkpoint}"]
    variants = {
        "continue": [],
        "fresh_optimizer": [*from_sft, "trainer.load_optimizer=false"],
        "init_checkpoint": [*from_sft, "trainer.load_optimizer=true"],
    }
    if args.warmup_steps:
        variants["fresh_optimizer_warmup"] = [
            *variants["fresh_optimizer"],
            f"trainer.lr_warmup_steps={args.warmup_steps}",
        ]
    results = {}
    for name, overrides in variants.items():
        results[name] = run_variant(name, out_dir, [*overrides, *args.overrides])
        print(json.dumps({name: results[name]}), file=sys.stderr)  # progress: one line per finished variant

    base = results["continue"]
    threshold = 0.5 * base["final_accuracy"]
    base_steps = first_step_reaching(base["curve"], threshold)
    for result in results.values():
        steps = first_step_reaching(result["curve"], threshold)
        result["steps_to_half_baseline_final"] = steps
        result["steps_ratio_vs_continue"] = ratio(steps, base_steps) if steps else None
        result["final_ratio_vs_continue"] = ratio(result["final_accuracy"], base["final_accuracy"])
        result["mean_ratio_vs_continue"] = ratio(result["mean_accuracy"], base["mean_accuracy"])
    report = {
        "benchmark": "rl_warm_start",
        "overrides": args.overrides,
        "variants": results,
        "half_baseline_final_accuracy": threshold,
        "plot": str(out_dir / "rl_warm_start.png"),
        "commit": git_commit(),
        "hardware": hardware_info(),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    plot(results, out_dir / "rl_warm_start.png")
    (out_dir / "rl_warm_start.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
