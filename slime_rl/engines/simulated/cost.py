"""Cost model of the simulated engine: seconds per decode step and per prefill, and its calibration.

Owns the formula and the fit. A decode step over `rows` running sequences whose contexts sum to
`context_tokens` takes `a + b·rows + c·context_tokens` seconds; one prefill forward over `tokens` (padded) prompt
tokens takes `e + d·tokens` seconds (e: the fixed cost of a forward and of sampling its first tokens; the
scheduler splits a step's prefill into forwards as the native scheduler does); and every request that ends costs
`f` seconds of engine time (the native engine's per-request work outside the forwards: releasing its KV row,
detokenising and answering over HTTP on the same CPU). It does no timing itself; the scheduler sleeps what it
returns.

Calibration reads the JSON objects `benchmarks/decode_step_cost.py` prints (`step_ms` per row count at one
`kv_len`). One file fixes the context, so `c` is not identifiable from it and the per-row cost at that context
goes into `b` (c = 0); files at two or more `kv_len` values fit all three. That benchmark does not time
prefill: `d`, `e` and `f` come from `prefill_ms_per_token`, `prefill_base_ms` and `request_ms` keys when the object
has them (benchmarks/simulator_fidelity.py adds them), otherwise they keep the values given. A calibration file
holds one such object or a JSON list of them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# decode_step_cost.py times `steps` decode steps after WARMUP_STEPS untimed ones, starting at KV length `kv_len`.
_DECODE_STEP_COST_WARMUP_STEPS = 5


@dataclass(frozen=True, slots=True)
class CostModel:
    """Step costs in seconds (see the module docstring for the formula)."""

    decode_base_s: float = 0.010  # a: fixed cost of one decode step
    decode_row_s: float = 0.0002  # b: per running sequence
    decode_context_token_s: float = 0.0  # c: per token of context over all running sequences
    prefill_token_s: float = 0.00002  # d: per prompt token prefilled
    prefill_base_s: float = 0.0  # e: per prefill forward
    request_s: float = 0.0  # f: per request that ends (any finish reason)

    def __post_init__(self) -> None:
        for name in (
            "decode_base_s",
            "decode_row_s",
            "decode_context_token_s",
            "prefill_token_s",
            "prefill_base_s",
            "request_s",
        ):
            value = getattr(self, name)
            if not value >= 0:  # also refuses NaN
                raise ValueError(f"cost model {name} must be >= 0 seconds, got {value}")

    def decode_s(self, rows: int, context_tokens: int) -> float:
        """Seconds of one decode step over `rows` sequences holding `context_tokens` tokens in all."""
        if rows == 0:
            return 0.0
        return self.decode_base_s + self.decode_row_s * rows + self.decode_context_token_s * context_tokens

    def prefill_s(self, tokens: int) -> float:
        """Seconds of one prefill forward over `tokens` prompt tokens, padding included (0 if none)."""
        return self.prefill_base_s + self.prefill_token_s * tokens if tokens else 0.0


def _points(result: dict[str, Any]) -> list[tuple[int, float, float]]:
    """(rows, mean context tokens over all rows, step seconds) of one decode_step_cost result."""
    if result.get("benchmark") != "decode_step_cost" or not isinstance(result.get("step_ms"), dict):
        raise ValueError("not a decode_step_cost result: expected 'benchmark': 'decode_step_cost' and a 'step_ms' map")
    mean_kv = result["kv_len"] + _DECODE_STEP_COST_WARMUP_STEPS + (result["steps"] - 1) / 2
    return [(int(rows), int(rows) * mean_kv, ms / 1000) for rows, ms in result["step_ms"].items()]


def calibrate(results: list[dict[str, Any]], base: CostModel | None = None) -> CostModel:
    """Fit a, b, c (least squares, none negative) to decode_step_cost results; d, e, f from their extra keys.

    Coefficients the data cannot determine keep `base`'s value for d, e and f and are 0 for c (one kv_len).
    Raises ValueError for input that is not such a result or holds fewer than two row counts.
    """
    base = base or CostModel()
    if not results:
        raise ValueError("calibration needs at least one decode_step_cost result")
    points = [p for result in results for p in _points(result)]
    if len({rows for rows, _, _ in points}) < 2:
        raise ValueError("calibration needs step times at two or more row counts")
    rows = np.array([p[0] for p in points], dtype=float)
    context = np.array([p[1] for p in points], dtype=float)
    seconds = np.array([p[2] for p in points], dtype=float)
    columns = {"a": np.ones_like(rows), "b": rows, "c": context}
    if len({r["kv_len"] for r in results}) < 2:
        del columns["c"]  # collinear with rows at one context length
    fit: dict[str, float] = {}
    while columns:  # drop a coefficient that comes out negative and refit the rest
        names = list(columns)
        coef, *_ = np.linalg.lstsq(np.stack([columns[n] for n in names], axis=1), seconds, rcond=None)
        fit = dict(zip(names, (float(x) for x in coef), strict=True))
        negative = [n for n in names if fit[n] < 0]
        if not negative:
            break
        del columns[min(negative, key=fit.__getitem__)]
        fit = {}

    def mean_s(key: str, default: float) -> float:
        values = [r[key] / 1000 for r in results if key in r]
        return sum(values) / len(values) if values else default

    return CostModel(
        decode_base_s=fit.get("a", 0.0),
        decode_row_s=fit.get("b", 0.0),
        decode_context_token_s=fit.get("c", 0.0),
        prefill_token_s=mean_s("prefill_ms_per_token", base.prefill_token_s),
        prefill_base_s=mean_s("prefill_base_ms", base.prefill_base_s),
        request_s=mean_s("request_ms", base.request_s),
    )


def calibrate_files(paths: list[str], base: CostModel | None = None) -> CostModel:
    """`calibrate` over JSON files, each holding one decode_step_cost object (the benchmark's output line) or a list."""
    results = []
    for path in paths:
        try:
            loaded = json.loads(Path(path).read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"calibration file {path}: {err}") from err
        results += loaded if isinstance(loaded, list) else [loaded]
    try:
        return calibrate(results, base)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"calibration files {', '.join(paths)}: {err}") from err
