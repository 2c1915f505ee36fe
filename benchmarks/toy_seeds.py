"""How reliably the toy run (`make demo`) learns: held-out accuracy before and after RL over several seeds.

Runs `slime-rl train experiment=toy seed=S` once per seed, each in its own process with its own run
directory (the seed sets the toy model's initialisation, the generated data and the sampling), and reads
each run's `summary.json`. The baseline of each seed is its own accuracy before RL (after the supervised
warm-up), measured in the same run. Prints one JSON object: per seed the first and last eval accuracy,
the gain and the wall time, plus the median and worst gain over the seeds. Never asserts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from slime_rl.observability.environment import git_commit, hardware_info


def run_seed(seed: int, out_dir: Path, extra: list[str]) -> dict[str, float]:
    name = f"toy_seed{seed}"
    argv = [sys.executable, "-m", "slime_rl.cli", "train", "experiment=toy", f"seed={seed}", f"name={name}"]
    argv += [f"output_dir={out_dir}", "buffer.appendonly=false", *extra]
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    wall_s = time.perf_counter() - start
    summary = json.loads((out_dir / name / "summary.json").read_text())
    first, last = summary["eval_accuracy_first"], summary["eval_accuracy_last"]
    return {"seed": seed, "accuracy_first": first, "accuracy_last": last, "gain": last - first, "wall_s": wall_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--out-dir", type=Path, default=None, help="run directories (default: a temporary one)")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = args.out_dir or Path(tmp)
        runs = []
        for seed in args.seeds:
            runs.append(run_seed(seed, out_dir, args.overrides))
            print(json.dumps(runs[-1]), file=sys.stderr)  # progress: one line per finished seed
    gains = [r["gain"] for r in runs]
    print(
        json.dumps(
            {
                "benchmark": "toy_seeds",
                "overrides": args.overrides,
                "runs": runs,
                "median_gain": statistics.median(gains),
                "worst_gain": min(gains),
                "median_wall_s": statistics.median(r["wall_s"] for r in runs),
                "commit": git_commit(),
                "hardware": hardware_info(),
            }
        )
    )


if __name__ == "__main__":
    main()
