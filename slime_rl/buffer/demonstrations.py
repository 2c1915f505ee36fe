"""Demonstrations for the supervised stage before RL (`sft.path`): read, checked and tokenized once.

Owns the demonstration file format and the order the stage takes rows in. It does not train (the trainer's
`train_sft` does) and does not decide when the stage runs (the driver does: fresh starts only).

Rows (JSONL, one JSON object per line, blank lines skipped), either text or token ids:
- `{"prompt": "47+385=", "response": "432"}`: the prompt is tokenized like a prompt dataset row without a
  chat template (`tokenizer(prompt)`, so with the tokenizer's own special tokens such as BOS); the response
  is tokenized without special tokens and the tokenizer's EOS is appended, so the policy learns to stop.
- `{"prompt_ids": [1, 20, 23], "response_ids": [24, 2]}`: used as given (include EOS yourself).
Only the response tokens are trained (loss mask 1); the prompt is context. A malformed row raises DataError
naming the file and its 1-based line.

Order: pass p over the file takes rows in a permutation drawn from (seed, p); step k takes the
`batch_size` rows after the first `k * batch_size`, crossing passes as needed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from slime_rl.errors import DataError
from slime_rl.types import Sample

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

TEXT_KEYS = ("prompt", "response")
ID_KEYS = ("prompt_ids", "response_ids")


class DemonstrationDataset:
    """The demonstrations of one JSONL file as token ids, in a per-pass order seeded by `seed`."""

    def __init__(self, path: str | Path, tokenizer: PreTrainedTokenizerBase, *, seed: int) -> None:
        self.path = Path(path)
        self.seed = seed
        texts: list[tuple[int, str, str]] = []  # (row index, prompt, response), tokenized in one batch below
        self._prompt_ids: list[np.ndarray] = []
        self._response_ids: list[np.ndarray] = []
        vocab_size = len(tokenizer)
        for where, record in _read_records(self.path):
            if isinstance(record, dict) and all(k in record for k in TEXT_KEYS):
                prompt, response = record["prompt"], record["response"]
                if not isinstance(prompt, str) or not prompt:
                    raise DataError(f"{where}: 'prompt' must be a non-empty string; fix the row")
                if not isinstance(response, str) or not response:
                    raise DataError(f"{where}: 'response' must be a non-empty string; fix the row")
                texts.append((len(self._prompt_ids), prompt, response))
                self._prompt_ids.append(np.zeros(0, np.int32))
                self._response_ids.append(np.zeros(0, np.int32))
            elif isinstance(record, dict) and all(k in record for k in ID_KEYS):
                self._prompt_ids.append(_token_ids(where, record, "prompt_ids", vocab_size))
                self._response_ids.append(_token_ids(where, record, "response_ids", vocab_size))
            else:
                found = sorted(record) if isinstance(record, dict) else type(record).__name__
                raise DataError(
                    f"{where}: a demonstration needs keys {list(TEXT_KEYS)} or {list(ID_KEYS)}, got {found}; "
                    "fix the row"
                )
        if not self._prompt_ids:
            raise DataError(f"{self.path}: no demonstrations; check sft.path")
        if texts:
            eos = tokenizer.eos_token_id
            if eos is None:
                raise DataError(f"{self.path}: text demonstrations need a tokenizer with an EOS token; give token ids")
            prompts = tokenizer([p for _, p, _ in texts])["input_ids"]
            responses = tokenizer([r for _, _, r in texts], add_special_tokens=False)["input_ids"]
            for (row, _, _), prompt_ids, response_ids in zip(texts, prompts, responses, strict=True):
                self._prompt_ids[row] = np.asarray(prompt_ids, np.int32)
                self._response_ids[row] = np.asarray([*response_ids, eos], np.int32)
        self._order_pass = -1
        self._order = np.arange(0)

    def __len__(self) -> int:
        return len(self._prompt_ids)

    def order(self, pass_num: int) -> np.ndarray:
        """Row indices in the order pass `pass_num` over the file takes them."""
        if pass_num != self._order_pass:
            self._order = np.random.default_rng([self.seed, pass_num]).permutation(len(self))
            self._order_pass = pass_num
        return self._order

    def batch(self, step: int, batch_size: int) -> list[Sample]:
        """The `batch_size` demonstrations of step `step`: response tokens trained (loss mask 1), version 0."""
        samples = []
        for i in range(step * batch_size, (step + 1) * batch_size):
            row = int(self.order(i // len(self))[i % len(self)])
            sample = Sample(uid=f"sft-{step}-{i}", group_id=f"sft-{step}", index=i, prompt_ids=self._prompt_ids[row])
            response = self._response_ids[row]
            sample.append_tokens(response, np.zeros(len(response), np.float32), version=0)
            samples.append(sample)
        return samples


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
