"""Verifiable toy tasks: multi-digit addition, string reversal, and multiplication (for the calculator tool).

Owns prompt formats, seeded dataset generation (JSONL rows with `prompt` and `label`), unanswerable
prompts (an operand replaced by `?`, labelled with the abstain answer) and the answer-checking rule of each
task, as pure functions. The rewards built on them are `toy/rewards.py`.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Callable
from pathlib import Path

TASKS = ("addition", "reversal", "multiplication")
ARITHMETIC_TASKS = ("addition", "multiplication")  # the tasks that can have unanswerable prompts
MISSING = "?"  # stands for the operand an unanswerable prompt leaves out


def addition_example(rng: random.Random, max_digits: int = 3) -> tuple[str, str]:
    """`("47+385=", "432")`: two operands with 1..max_digits digits each."""
    a, b = (rng.randrange(10 ** rng.randint(1, max_digits)) for _ in range(2))
    return f"{a}+{b}=", str(a + b)


def multiplication_example(rng: random.Random) -> tuple[str, str]:
    """`("347*85=", "29495")`: a 2-3 digit number times a 2 digit one, beyond what the toy model computes alone."""
    a, b = rng.randrange(10, 1000), rng.randrange(10, 100)
    return f"{a}*{b}=", str(a * b)


def hide_operand(prompt: str, rng: random.Random) -> str:
    """`prompt` ("47+385=") with one operand replaced by `MISSING` ("47+?="): a question with no answer."""
    left, op, right = _operands(prompt)
    return f"{MISSING}{op}{right}=" if rng.random() < 0.5 else f"{left}{op}{MISSING}="


def fabricated_answer(prompt: str, rng: random.Random) -> str:
    """An answer to the unanswerable `prompt` made up by guessing its missing operand (1-3 digits)."""
    left, op, right = _operands(prompt)
    guess = str(rng.randrange(10 ** rng.randint(1, 3)))
    a, b = (guess if x == MISSING else x for x in (left, right))
    return str(int(a) + int(b) if op == "+" else int(a) * int(b))


def _operands(prompt: str) -> tuple[str, str, str]:
    expression = prompt.removesuffix("=")
    op = "+" if "+" in expression else "*"
    left, _, right = expression.partition(op)
    return left, op, right


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
    if task in ARITHMETIC_TASKS:
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
    "multiplication": multiplication_example,
}


def make_rows(
    task: str, num_rows: int, seed: int, *, unanswerable_prob: float = 0.0, abstain_answer: str = ""
) -> list[dict[str, str]]:
    """`num_rows` rows `{"prompt", "label"}` of `task`; the same arguments always give the same rows.

    With `unanswerable_prob` > 0 (arithmetic tasks only) that share of rows, drawn independently, lose an
    operand (`hide_operand`) and are labelled `abstain_answer`; the other rows are those of `unanswerable_prob=0`.
    """
    if task not in _EXAMPLES:
        raise ValueError(f"task={task!r} is unknown; choose one of {TASKS}")
    if unanswerable_prob and (task not in ARITHMETIC_TASKS or not abstain_answer):
        raise ValueError(f"unanswerable prompts need an arithmetic task {ARITHMETIC_TASKS} and an abstain answer")
    rng = random.Random(f"{task}:{seed}")
    hide_rng = random.Random(f"{task}:{seed}:unanswerable")
    rows = []
    for _ in range(num_rows):
        prompt, label = _EXAMPLES[task](rng)
        if unanswerable_prob and hide_rng.random() < unanswerable_prob:
            prompt, label = hide_operand(prompt, hide_rng), abstain_answer
        rows.append({"prompt": prompt, "label": label})
    return rows


def write_dataset(path: str | Path, rows: list[dict[str, str]]) -> Path:
    """Write `rows` (from `make_rows`) as JSONL to `path`; returns `path`."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return out
