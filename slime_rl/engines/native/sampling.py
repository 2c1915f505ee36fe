"""Vectorised per-row sampling with temperature, top-k and top-p, returning each sampled token's log-prob.

Log-prob definition (what `output_token_logprobs` reports): the log-probability of the sampled token
under the distribution it was actually sampled from, i.e. `log_softmax(logits / temperature)`
restricted to the top-k / top-p set and renormalised over it. With temperature 1 and no top-k/top-p
this is exactly the model's `log_softmax(logits)`, which the trainer recomputes. Greedy rows
(temperature < 1e-6) have a degenerate sampling distribution; for them we report the model's
`log_softmax(logits)` of the argmax token (temperature 1), the most useful number for diagnostics.

Randomness: rows with a `sampling_seed` draw from their own generator (reproducible per request);
the others share the engine's generator. Sampling uses the Gumbel-max trick so all rows sample in one
vectorised `argmax`.
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
    generators: list[torch.Generator | None]  # per row; None = shared generator
    needs_filter: bool  # any row with top_k > 0 or top_p < 1
    all_greedy: bool


def make_row_sampling(
    temperatures: list[float], top_ps: list[float], top_ks: list[int], generators: list[torch.Generator | None], device
) -> RowSampling:
    return RowSampling(
        temperature=torch.tensor(temperatures, dtype=torch.float32, device=device),
        top_p=torch.tensor(top_ps, dtype=torch.float32, device=device),
        top_k=torch.tensor(top_ks, dtype=torch.int64, device=device),
        generators=generators,
        needs_filter=any(k > 0 for k in top_ks) or any(p < 1.0 for p in top_ps),
        all_greedy=all(t < GREEDY_BELOW for t in temperatures),
    )


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
    noise = torch.empty(shape, dtype=torch.float32, device=device).exponential_(generator=shared)
    for i, gen in enumerate(rows.generators):
        if gen is not None:
            noise[i].exponential_(generator=gen)
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
