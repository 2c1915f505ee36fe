"""Hydra entry point for training: `python launch/train.py experiment=toy mode=fully_async ...`.

The same as `slime-rl train ...`; kept as a script so cluster launchers (Ray job submission, SLURM) can run
it by path.
"""

import sys

from slime_rl.cli import main

if __name__ == "__main__":
    main(["train", *sys.argv[1:]])
