"""Vectorised per-row sampling with temperature, top-k and top-p, returning each sampled token's log-prob.

Log-prob definition (what `output_token_logprobs` reports): the log-probability of the sampled token
under the distribution it was actually sampled from, i.e. `log_softmax(logits / temperature)`
restricted to the top-k / top-p set and renormalised over it. With temperature 1 and no top-k/top-p
this is exactly the model's `log_softmax(logits)`, which the trainer recomputes. Greedy rows
(temperature < 1e-6) have a degenerate sampling distribution; for them we report the model's
`log_softmax(logits)` of the argmax token (temperature 1), the most useful number for diagnostics.

Randomness: rows with a `sampling_seed` take their noise from a counter-based hash of (seed, token index
within the request, vocab id), so a seeded request draws the same tokens whatever else shares its batch,
and a whole batch of seeded rows costs a few vectorised integer ops instead of one generator call per
row. The other rows share the engine's generator. Sampling uses the Gumbel-max trick so all rows sample
in one vectorised `argmax`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

GREEDY_BELOW = 1e-6


@dataclass(slots=True)
class RowSampling:
    """Sampling settings of the rows of one step, as tensors on the logits' device."""

    temperature: torch.Tensor  # float32 [B]
    top_p: torch.Tensor  # float32 [B]
    top_k: torch.Tensor  # int64 [B]; -1 = all
    seeds: torch.Tensor  # int64 [B]; the row's sampling seed (unused where `seeded` is False)
    counters: torch.Tensor  # int64 [B]; index of the token being sampled within its request
    seeded: torch.Tensor  # bool [B]; False = noise from the shared generator
    any_seeded: bool
    all_seeded: bool
    needs_filter: bool  # any row with top_k > 0 or top_p < 1
    all_greedy: bool


def make_row_sampling(
    temperatures: list[float],
    top_ps: list[float],
    top_ks: list[int],
    seeds: list[int | None],
    counters: list[int],
    device,
) -> RowSampling:
    return RowSampling(
        temperature=torch.tensor(temperatures, dtype=torch.float32, device=device),
        top_p=torch.tensor(top_ps, dtype=torch.float32, device=device),
        top_k=torch.tensor(top_ks, dtype=torch.int64, device=device),
        seeds=torch.tensor([0 if s is None else s for s in seeds], dtype=torch.int64, device=device),
        counters=torch.tensor(counters, dtype=torch.int64, device=device),
        seeded=torch.tensor([s is not None for s in seeds], dtype=torch.bool, device=device),
        any_seeded=any(s is not None for s in seeds),
        all_seeded=all(s is not None for s in seeds),
        needs_filter=any(k > 0 for k in top_ks) or any(p < 1.0 for p in top_ps),
        all_greedy=all(t < GREEDY_BELOW for t in temperatures),
    )


def _as_int64(constant: int) -> int:
    """A 64-bit constant as the signed int64 with the same bits (torch integer ops wrap modulo 2**64)."""
    return constant - (1 << 64) if constant >= 1 << 63 else constant


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 bits (torch's `>>` is arithmetic on signed integers)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


_GOLDEN = _as_int64(0x9E3779B97F4A7C15)
_MIX1, _MIX2 = _as_int64(0xBF58476D1CE4E5B9), _as_int64(0x94D049BB133111EB)
_STREAM = _as_int64(0xD1B54A32D192ED03)


def hashed_uniform(seeds: torch.Tensor, counters: torch.Tensor, vocab: int) -> torch.Tensor:
    """Uniform noise in (0, 1), float64 [B, V], a pure function of (seed, counter, vocab id) per entry.

    SplitMix64's finaliser over a distinct 64-bit key per entry; the top 53 bits become the float.
    """
    ids = torch.arange(vocab, dtype=torch.int64, device=seeds.device)
    key = (seeds * _GOLDEN + counters * _STREAM)[:, None] + ids[None, :] * _GOLDEN
    key = (key ^ _shift_right(key, 30)) * _MIX1
    key = (key ^ _shift_right(key, 27)) * _MIX2
    key = key ^ _shift_right(key, 31)
    return (_shift_right(key, 11).double() + 0.5) / float(1 << 53)


def _filter(logits: torch.Tensor, rows: RowSampling) -> torch.Tensor:
    """Set logits outside each row's top-k and top-p set to -inf. logits [B, V], already temperature-scaled."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # [B, V]
    vocab = logits.shape[-1]
    ranks = torch.arange(vocab, device=logits.device).expand_as(sorted_logits)
    k = torch.where(rows.top_k > 0, rows.top_k, vocab)[:, None]
    drop = ranks >= k
    probs = sorted_logits.masked_fill(drop, float("-inf")).softmax(dim=-1)
    # Keep a token if the mass strictly before it is below top_p (the top token is always kept).
    mass_before = probs.cumsum(dim=-1) - probs
    drop |= mass_before >= rows.top_p[:, None]
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(-1, order, sorted_logits)


def _gumbel(shape: tuple[int, int], rows: RowSampling, device, shared: torch.Generator | None) -> torch.Tensor:
    """Gumbel noise [B, V]: hashed for seeded rows, from the shared generator for the others (drawn only if any)."""
    if not rows.any_seeded:
        return -torch.empty(shape, dtype=torch.float32, device=device).exponential_(generator=shared).log()
    noise = -hashed_uniform(rows.seeds, rows.counters, shape[1]).log().float()  # Exp(1)
    if not rows.all_seeded:
        unseeded = torch.empty(shape, dtype=torch.float32, device=device).exponential_(generator=shared)
        noise = torch.where(rows.seeded[:, None], noise, unseeded)
    return -noise.log()


def sample(
    logits: torch.Tensor, rows: RowSampling, shared: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per row from logits [B, V]. Returns (token ids int64 [B], logprobs float32 [B])."""
    logits = logits.float()
    raw_logprobs = logits.log_softmax(dim=-1)
    if rows.all_greedy:
        tokens = logits.argmax(dim=-1)
        return tokens, raw_logprobs.gather(-1, tokens[:, None])[:, 0]
    greedy = rows.temperature < GREEDY_BELOW
    scaled = logits / rows.temperature.clamp_min(GREEDY_BELOW)[:, None]
    if rows.needs_filter:
        scaled = _filter(scaled, rows)
    logprobs = scaled.log_softmax(dim=-1)  # [B, V], -inf outside the kept set
    sampled = (logprobs + _gumbel(tuple(logits.shape), rows, logits.device, shared)).argmax(dim=-1)
    tokens = torch.where(greedy, logits.argmax(dim=-1), sampled)
    chosen = torch.where(greedy[:, None], raw_logprobs, logprobs).gather(-1, tokens[:, None])[:, 0]
    return tokens, chosen
