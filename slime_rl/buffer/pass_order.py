"""The order a file's rows are taken in, pass by pass: the prompt dataset's epochs and the SFT stage's passes.

Pass p is a permutation of the rows drawn from (seed, p), so a run that restarts at any pass takes the same
rows in the same order; without shuffling every pass is 0..n-1.
"""

from __future__ import annotations

import numpy as np


class PassOrder:
    """Row indices of `num_rows` rows for any pass; the latest pass's order is kept (passes are read in turn)."""

    def __init__(self, num_rows: int, seed: int, *, shuffle: bool = True) -> None:
        self.num_rows = num_rows
        self.seed = seed
        self.shuffle = shuffle
        self._pass = -1
        self._order = np.arange(0)

    def __call__(self, pass_num: int) -> np.ndarray:
        """Row indices in the order pass `pass_num` takes them."""
        if pass_num != self._pass:
            n = self.num_rows
            self._order = np.random.default_rng([self.seed, pass_num]).permutation(n) if self.shuffle else np.arange(n)
            self._pass = pass_num
        return self._order
