"""Verifiable toy tasks: multi-digit addition and string reversal.

Owns prompt formats, seeded dataset generation (JSONL rows with `prompt` and `label`) and the
answer-checking rule of each task, as pure functions. The rewards built on them are `toy/rewards.py`.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Callable
from pathlib import Path

TASKS = ("addition", "reversal")


def addition_example(rng: random.Random, max_digits: int = 3) -> tuple[str, str]:
    """`("47+385=", "432")`: two operands with 1..max_digits digits each."""
    a, b = (rng.randrange(10 ** rng.randint(1, max_digits)) for _ in range(2))
    return f"{a}+{b}=", str(a + b)


def reversal_example(rng: random.Random, max_len: int = 6) -> tuple[str, str]:
    """`("rev abc=", "cba")`: a lowercase word of 1..max_len letters."""
    word = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(1, max_len)))
    return f"rev {word}=", word[::-1]


def extract_answer(response: str) -> str:
    """The answer part of a response: text before the first newline, stripped of spaces."""
    return response.split("\n", 1)[0].strip()


def is_correct(task: str, response: str, label: str) -> bool:
    """True if `response` answers the `task` prompt whose ground truth is `label`.

    Addition compares integers (so "0432" is right for 432); reversal compares strings exactly.
    """
    answer = extract_answer(response)
    if task == "addition":
        return answer.isdigit() and int(answer) == int(label)
    if task == "reversal":
        return answer == label
    raise ValueError(f"task={task!r} is unknown; choose one of {TASKS}")


def demonstration(label: str, rng: random.Random, distractor_prob: float) -> str:
    """A supervised demonstration of the answer `label`: with probability `distractor_prob` a sloppy one,
    with a trailing `.` after the answer (which `is_correct` rejects: answers are exact).

    Sloppy demonstrations give the toy a realistic starting point for RL: the warmed-up policy knows the
    arithmetic but its greedy answers are usually spoilt by the habit, and only the verifiable reward
    teaches it to stop right after the answer.
    """
    if rng.random() < distractor_prob:
        return label + "."
    return label


_EXAMPLES: dict[str, Callable[[random.Random], tuple[str, str]]] = {
    "addition": addition_example,
    "reversal": reversal_example,
}


def make_rows(task: str, num_rows: int, seed: int) -> list[dict[str, str]]:
    """`num_rows` rows `{"prompt", "label"}` of `task`; the same seed always gives the same rows."""
    if task not in _EXAMPLES:
        raise ValueError(f"task={task!r} is unknown; choose one of {TASKS}")
    rng = random.Random(f"{task}:{seed}")
    return [dict(zip(("prompt", "label"), _EXAMPLES[task](rng), strict=True)) for _ in range(num_rows)]


def write_dataset(path: str | Path, task: str, num_rows: int, seed: int) -> Path:
    """Write `make_rows(task, num_rows, seed)` as JSONL to `path`; returns `path`."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as f:
        for row in make_rows(task, num_rows, seed):
            f.write(json.dumps(row) + "\n")
    return out
