"""Response lengths of the simulated engine: a lognormal distribution, or per prompt from a recorded trace.

Owns how many tokens a simulated response has before its EOS (the scheduler caps it at `max_new_tokens`
and ends with finish reason `length` there). A trace is a JSONL file, one object per prompt:
`{"input_ids": [...], "response_lengths": [n, ...]}`; requests for a prompt in the trace take its lengths
in turn (a GRPO group of k samples replays k recorded lengths), other prompts fall back to the distribution.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from itertools import cycle
from pathlib import Path


def prompt_key(input_ids: list[int]) -> bytes:
    """A stable key of a prompt's token ids."""
    return hashlib.blake2b(json.dumps(input_ids, separators=(",", ":")).encode(), digest_size=16).digest()


class ResponseLengths:
    """Draws response lengths (>= 1 token) for prompts."""

    def __init__(self, *, median: float, sigma: float, trace: dict[bytes, list[int]] | None = None) -> None:
        if median < 1:
            raise ValueError(f"response length median must be >= 1 token, got {median}")
        if sigma < 0:
            raise ValueError(f"response length sigma must be >= 0, got {sigma}")
        self.mu, self.sigma = math.log(median), sigma
        self._replay = {key: cycle(lengths) for key, lengths in (trace or {}).items() if lengths}

    @classmethod
    def from_trace_file(cls, path: str, *, median: float, sigma: float) -> ResponseLengths:
        """Lengths replayed from the JSONL trace at `path` (format in the module docstring)."""
        trace: dict[bytes, list[int]] = {}
        with open(Path(path)) as lines:
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    ids, lengths = row["input_ids"], row["response_lengths"]
                    if not all(isinstance(n, int) and n >= 1 for n in lengths):
                        raise ValueError("response_lengths must be integers >= 1")
                except (ValueError, KeyError, TypeError) as err:
                    raise ValueError(f"{path}:{number}: not a length-trace row ({err})") from err
                trace.setdefault(prompt_key(ids), []).extend(lengths)
        return cls(median=median, sigma=sigma, trace=trace)

    @property
    def num_traced_prompts(self) -> int:
        return len(self._replay)

    def draw(self, input_ids: list[int], rng: random.Random) -> int:
        """The next recorded length of this prompt, else one from the lognormal distribution."""
        replay = self._replay.get(prompt_key(input_ids)) if self._replay else None
        if replay is not None:
            return next(replay)
        return max(1, round(rng.lognormvariate(self.mu, self.sigma)))
