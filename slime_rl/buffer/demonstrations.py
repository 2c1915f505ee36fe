"""Demonstrations for the supervised stage before RL (`sft.path`): read, checked and tokenized once.

Owns the demonstration file format and the order the stage takes rows in. It does not train (the trainer's
`train_sft` does) and does not decide when the stage runs (the driver does: fresh starts only).

Rows (JSONL, one JSON object per line, blank lines skipped), either text or token ids:
- `{"prompt": "47+385=", "response": "432"}`: the prompt is tokenized like a prompt dataset row without a
  chat template (`tokenizer(prompt)`, so with the tokenizer's own special tokens such as BOS); the response
  is tokenized without special tokens and the tokenizer's EOS is appended, so the policy learns to stop.
- a multi-turn response is a list of segments, `{"prompt": "6*7=", "response": [{"text": "<tool>calculator:
  6*7</tool>"}, {"text": "<result>42</result>", "train": false}, {"text": "<answer>42</answer>"}]}`: each
  segment is tokenized on its own (as the multi-turn rollout tokenizes each tool result) and one with
  `"train": false` (a tool's output) is context, loss mask 0, like an observation in a rollout.
- `{"prompt_ids": [1, 20, 23], "response_ids": [24, 2]}`: used as given (include EOS yourself).
The response tokens are trained (loss mask 1), except untrained segments; the prompt is context. A malformed
row raises DataError naming the file and its 1-based line.

Order: pass p over the file takes rows in a permutation drawn from (seed, p) (`PassOrder`); step k takes the
`batch_size` rows after the first `k * batch_size`, crossing passes as needed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from slime_rl.buffer.pass_order import PassOrder
from slime_rl.errors import DataError
from slime_rl.types import Sample

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

TEXT_KEYS = ("prompt", "response")
ID_KEYS = ("prompt_ids", "response_ids")


Segment = tuple[np.ndarray, bool]  # (token ids, trained)


class DemonstrationDataset:
    """The demonstrations of one JSONL file as token ids, in a per-pass order seeded by `seed`."""

    def __init__(self, path: str | Path, tokenizer: PreTrainedTokenizerBase, *, seed: int) -> None:
        self.path = Path(path)
        self.seed = seed
        prompts: list[tuple[int, str]] = []  # (row index, text), tokenized in one batch below
        segments: list[tuple[int, str, bool]] = []  # (row index, text, trained), in response order
        self._prompt_ids: list[np.ndarray] = []
        self._responses: list[list[Segment]] = []
        vocab_size = len(tokenizer)
        for where, record in _read_records(self.path):
            row = len(self._prompt_ids)
            if isinstance(record, dict) and all(k in record for k in TEXT_KEYS):
                prompt = record["prompt"]
                if not isinstance(prompt, str) or not prompt:
                    raise DataError(f"{where}: 'prompt' must be a non-empty string; fix the row")
                prompts.append((row, prompt))
                segments += [(row, text, trained) for text, trained in _response_segments(where, record["response"])]
                self._prompt_ids.append(np.zeros(0, np.int32))
                self._responses.append([])
            elif isinstance(record, dict) and all(k in record for k in ID_KEYS):
                self._prompt_ids.append(_token_ids(where, record, "prompt_ids", vocab_size))
                self._responses.append([(_token_ids(where, record, "response_ids", vocab_size), True)])
            else:
                found = sorted(record) if isinstance(record, dict) else type(record).__name__
                raise DataError(
                    f"{where}: a demonstration needs keys {list(TEXT_KEYS)} or {list(ID_KEYS)}, got {found}; "
                    "fix the row"
                )
        if not self._prompt_ids:
            raise DataError(f"{self.path}: no demonstrations; check sft.path")
        if prompts:
            eos = tokenizer.eos_token_id
            if eos is None:
                raise DataError(f"{self.path}: text demonstrations need a tokenizer with an EOS token; give token ids")
            for (row, _), ids in zip(prompts, tokenizer([p for _, p in prompts])["input_ids"], strict=True):
                self._prompt_ids[row] = np.asarray(ids, np.int32)
            texts = [text for _, text, _ in segments]
            for (row, _, trained), ids in zip(
                segments, tokenizer(texts, add_special_tokens=False)["input_ids"], strict=True
            ):
                self._responses[row].append((np.asarray(ids, np.int32), trained))
            for row, _ in prompts:  # the policy learns to stop: EOS closes every text response, trained
                self._responses[row].append((np.asarray([eos], np.int32), True))
        self.order = PassOrder(len(self._prompt_ids), seed)  # order(pass_num): row indices

    def __len__(self) -> int:
        return len(self._prompt_ids)

    def batch(self, step: int, batch_size: int) -> list[Sample]:
        """The `batch_size` demonstrations of step `step`: response tokens trained (loss mask 1, version 0)
        except untrained segments (loss mask 0)."""
        samples = []
        for i in range(step * batch_size, (step + 1) * batch_size):
            row = int(self.order(i // len(self))[i % len(self)])
            sample = Sample(uid=f"sft-{step}-{i}", group_id=f"sft-{step}", index=i, prompt_ids=self._prompt_ids[row])
            for ids, trained in self._responses[row]:
                if trained:
                    sample.append_tokens(ids, np.zeros(len(ids), np.float32), version=0)
                else:
                    sample.append_observation(ids)
            samples.append(sample)
        return samples


def _response_segments(where: str, response: Any) -> list[tuple[str, bool]]:
    """A text row's response as (text, trained) segments: a string is one trained segment."""
    if isinstance(response, str) and response:
        return [(response, True)]
    if not isinstance(response, list) or not response:
        raise DataError(f"{where}: 'response' must be a non-empty string or a list of segments; fix the row")
    segments = []
    for k, segment in enumerate(response):
        text = segment.get("text") if isinstance(segment, dict) else None
        trained = segment.get("train", True) if isinstance(segment, dict) else None
        if not isinstance(text, str) or not text or not isinstance(trained, bool) or set(segment) - {"text", "train"}:
            raise DataError(
                f'{where}: response segment {k} must be {{"text": non-empty string, "train": true|false '
                f"(optional)}}, got {json.dumps(segment)}; fix the row"
            )
        segments.append((text, trained))
    return segments


def _read_records(path: Path) -> list[tuple[str, Any]]:
    if not path.is_file():
        raise DataError(f"demonstration file {path} does not exist; check sft.path")
    if path.suffix != ".jsonl":
        raise DataError(f"demonstration file {path} must be JSONL (end in .jsonl); check sft.path")
    records = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                records.append((f"{path}:{number}", json.loads(line)))
            except json.JSONDecodeError as err:
                raise DataError(
                    f"{path}:{number}: invalid JSON ({err.msg} at column {err.colno}); fix the row"
                ) from None
    return records


def _token_ids(where: str, record: dict[str, Any], key: str, vocab_size: int) -> np.ndarray:
    ids = record[key]
    if not isinstance(ids, list) or not ids or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise DataError(f"{where}: {key!r} must be a non-empty list of integer token ids; fix the row")
    if not all(0 <= i < vocab_size for i in ids):
        bad = next(i for i in ids if not 0 <= i < vocab_size)
        raise DataError(f"{where}: {key!r} holds token id {bad}, outside the tokenizer's {vocab_size} ids; fix the row")
    return np.asarray(ids, np.int32)
