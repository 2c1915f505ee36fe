"""One simulated engine: the attributes and weight operations the native engine's HTTP app (native/app.py) uses.

Owns the engine's identity (model path, limits, weight version) and its answers to weight updates. It has
no model, no tokenizer and no torch: `text` prompts are refused with HTTP 400 (send `input_ids`), responses
carry an empty `text`, and weights are metadata only. `/update_weights_from_disk` and `/update_weight_version`
set the version; it cannot join a torch.distributed weight-update group (a group of hundreds of engines would
cost what the simulator exists to avoid), so `/init_weights_update_group` and `/update_weights_from_distributed`
answer SGLang's `{"success": false, "message"}` saying so: run simulated engines with disk weight sync or
version-only updates.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from slime_rl.engines.native.bodies import BadRequest
from slime_rl.engines.simulated.cost import CostModel
from slime_rl.engines.simulated.lengths import ResponseLengths
from slime_rl.engines.simulated.scheduler import SimulatedScheduler

logger = logging.getLogger(__name__)
NO_DISTRIBUTED = (
    "the simulated engine has no model and does not join torch.distributed weight-update groups; "
    "use disk weight sync (/update_weights_from_disk) or /update_weight_version"
)


@dataclass(kw_only=True)
class SimulatedEngineArgs:
    """One engine's settings (the `python -m slime_rl.engines.simulated` flags, less host, ports and count)."""

    model_path: str = "simulated"  # reported by /get_model_info; its config.json gives the vocabulary if present
    max_running_requests: int = 64  # continuous-batching slots
    max_context_len: int = 2048  # prompt + response tokens per sequence
    max_prefill_tokens: int = 4096  # prompt tokens admitted per step
    weight_version: str = "default"  # reported until the first weight update sets another
    seed: int = 0
    vocab_size: int = 0  # token ids are in [0, vocab_size); 0: the model's config.json
    eos_token_id: int = -1  # the token that ends a response; -1: the model's config.json
    cost: CostModel = CostModel()
    length_median: float = 64.0  # tokens
    length_sigma: float = 1.0
    length_trace_path: str | None = None


def _model_vocab(model_path: str) -> tuple[int | None, int | None]:
    """(vocab_size, eos_token_id) from `model_path`/config.json, None where it does not say."""
    path = Path(model_path) / "config.json"
    if not path.is_file():
        return None, None
    config = json.loads(path.read_text())
    eos = config.get("eos_token_id")
    return config.get("vocab_size"), eos[0] if isinstance(eos, list) and eos else eos


class _NoTokenizer:
    """Stands in for a tokenizer: text prompts are refused, outputs detokenise to ''."""

    def __call__(self, text: str) -> dict:
        raise BadRequest("the simulated engine has no tokenizer; send input_ids instead of text")

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return ""


class SimulatedEngine:
    """A simulated engine. Construct and `start()` inside the event loop that serves it; `await stop()` after."""

    def __init__(self, args: SimulatedEngineArgs, lengths: ResponseLengths | None = None) -> None:
        vocab, eos = _model_vocab(args.model_path)
        self.vocab_size = args.vocab_size or vocab
        eos_token_id = args.eos_token_id if args.eos_token_id >= 0 else eos
        if not self.vocab_size or eos_token_id is None:
            raise ValueError(
                f"vocab_size and eos_token_id are needed: set them, or give a model path with a config.json "
                f"that has them (got {args.model_path!r})"
            )
        self.args = args
        self.tokenizer = _NoTokenizer()
        if lengths is None:
            lengths = (
                ResponseLengths.from_trace_file(
                    args.length_trace_path, median=args.length_median, sigma=args.length_sigma
                )
                if args.length_trace_path
                else ResponseLengths(median=args.length_median, sigma=args.length_sigma)
            )
        self.scheduler = SimulatedScheduler(
            args.cost,
            lengths,
            max_running_requests=args.max_running_requests,
            max_prefill_tokens=args.max_prefill_tokens,
            max_context_len=args.max_context_len,
            vocab_size=self.vocab_size,
            eos_token_id=eos_token_id,
            seed=args.seed,
            weight_version=args.weight_version,
        )

    def start(self) -> None:
        self.scheduler.start()

    async def stop(self) -> None:
        await self.scheduler.stop()

    @property
    def weight_version(self) -> str:
        return self.scheduler.weight_version

    @property
    def max_context_len(self) -> int:
        return self.args.max_context_len

    def server_info(self) -> dict:
        info = asdict(self.args)
        return {
            **info,
            "engine": "simulated",
            "vocab_size": self.vocab_size,
            "max_total_num_tokens": self.args.max_running_requests * self.args.max_context_len,
        }

    async def update_weights_from_disk(self, model_path: str, weight_version: str | None) -> str:
        if weight_version is not None:
            self.scheduler.set_weight_version(weight_version)
        return f"Simulated: recorded an update from {model_path} (no weights are read)."

    async def init_weights_update_group(self, **_: object) -> str:
        raise NotImplementedError(NO_DISTRIBUTED)

    async def update_weights_from_distributed(self, **_: object) -> str:
        raise NotImplementedError(NO_DISTRIBUTED)

    async def destroy_weights_update_group(self, group_name: str) -> str:
        raise NotImplementedError(NO_DISTRIBUTED)

    async def set_weight_version(self, version: str) -> None:
        self.scheduler.set_weight_version(version)

    async def flush_cache(self) -> bool:
        return self.scheduler.flush_cache()
