"""Rule-based answer checking for math-style tasks: final `\\boxed{...}` answers and exact match after
normalisation. Pure string functions; no model, no I/O."""

from __future__ import annotations

import re

_NUMBER = re.compile(r"^-?\d+(\.\d+)?$")


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` in `text`, with nested braces balanced; None if there is none."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
    return None


def normalize_answer(answer: str) -> str:
    """Canonical form for comparison: no spaces, `$`, `\\left`/`\\right`, trailing `.`; `1,000` -> `1000`;
    numbers lose trailing zeros (`2.50` -> `2.5`, `3.0` -> `3`)."""
    text = answer.strip().strip("$").replace("\\left", "").replace("\\right", "").replace("\\!", "")
    text = re.sub(r"\\text\{(.*?)\}", r"\1", text)
    text = re.sub(r"\s+", "", text).rstrip(".")
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", text):
        text = text.replace(",", "")
    if _NUMBER.match(text) and "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def extract_final_answer(response: str) -> str:
    """The boxed answer if there is one, else the text after the last `answer is`, else the last line."""
    boxed = last_boxed(response)
    if boxed is not None:
        return boxed
    match = re.search(r"answer is[:\s]*(.+)", response, flags=re.IGNORECASE | re.DOTALL)
    if match:
        return match.group(1).strip().splitlines()[0]
    lines = [line for line in response.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def math_reward(response: str, label: str | None) -> float:
    """1.0 if the final answer equals `label` after normalisation, else 0.0 (no label scores 0)."""
    if label is None:
        return 0.0
    return float(normalize_answer(extract_final_answer(response)) == normalize_answer(label))
