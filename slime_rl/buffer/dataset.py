"""Prompt datasets (JSONL or Parquet) and the resumable cursor that refills the buffer's `prompts` list.

Owns reading, validating and tokenizing prompt rows, the per-epoch shuffle, and the `dataset` hash in Redis
(`epoch`, `offset` and the fingerprint `seed`, `shuffle`, `num_rows`, plus the load-time drop counts), so a
resumed run continues at the row where the last one stopped. It does not own the buffer's queues
(`store`) or the wire format (`codec`).

Rows are read, checked and tokenized once, at load. A malformed row raises DataError naming the file and
line (JSONL, 1-based line of the file; blank lines are skipped) or row (Parquet, 1-based); with
`on_bad_row="skip"` it is skipped, counted and logged. Prompts longer than `max_prompt_tokens` are
dropped, counted and logged. A prompt the engines could never serve (prompt + `max_new_tokens` over
their context, which they answer with HTTP 400) is a bad row too, handled by `on_bad_row` the same way.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgpack
import numpy as np
import redis

from slime_rl.buffer.codec import encode_group
from slime_rl.buffer.pass_order import PassOrder
from slime_rl.buffer.store import RedisBuffer
from slime_rl.config.buffer import DataConfig
from slime_rl.errors import ConfigError, DataError
from slime_rl.types import Group, Sample

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Cursor:
    """Position of the next prompt to issue: row `offset` of epoch `epoch`'s order."""

    epoch: int
    offset: int


@dataclass(slots=True)
class _Row:
    where: str  # file and line (or row) it came from
    prompt: str | list[dict[str, Any]]
    label: str | None
    metadata: dict[str, Any]


class PromptDataset:
    """The usable prompts of one file, tokenized, in a per-epoch order.

    Args:
        cfg: the `buffer.data` config; `cfg.path` must name a `.jsonl` or `.parquet` file.
        tokenizer: a HuggingFace tokenizer. With `cfg.apply_chat_template` the prompt (a string, or a list of
            `{"role", "content"}` messages) is rendered by the tokenizer's chat template with a generation
            prompt and encoded without extra special tokens; otherwise the string is encoded as is.
        n_samples_per_prompt: samples in each group `make_group` builds.
        seed: shuffle seed; epoch e is ordered by a permutation drawn from (seed, e).
        context_len: tokens per sequence (prompt + response) the engines accept; None = no check.
        max_new_tokens: response tokens each sample may generate. A resumed sample (APRIL) sends its prompt
            and response so far with the rest of this budget, so every request totals the same.
    """

    def __init__(
        self,
        cfg: DataConfig,
        tokenizer: PreTrainedTokenizerBase,
        *,
        n_samples_per_prompt: int,
        seed: int,
        context_len: int | None = None,
        max_new_tokens: int = 0,
    ) -> None:
        if cfg.path is None:
            raise ConfigError("buffer.data.path is null; give a .jsonl or .parquet prompt file")
        if cfg.apply_chat_template and not getattr(tokenizer, "chat_template", None):
            raise ConfigError(
                "buffer.data.apply_chat_template=true but the tokenizer has no chat template; "
                "set it to false or use a chat model's tokenizer"
            )
        self.path = Path(cfg.path)
        self.n_samples_per_prompt = n_samples_per_prompt
        self.seed = seed
        self.shuffle = cfg.shuffle
        self.num_bad_rows = 0
        self.num_filtered_long = 0
        self.num_over_context = 0
        rows = [row for row in self._parse(cfg) if row is not None]
        prompt_ids = _tokenize(tokenizer, [r.prompt for r in rows], cfg.apply_chat_template)
        keep = [
            i for i, ids in enumerate(prompt_ids) if cfg.max_prompt_tokens is None or len(ids) <= cfg.max_prompt_tokens
        ]
        self.num_filtered_long = len(rows) - len(keep)
        if context_len is not None:
            keep = [i for i in keep if self._fits(rows[i].where, len(prompt_ids[i]), context_len, max_new_tokens, cfg)]
        if self.num_filtered_long:
            logger.warning(
                "%s: dropped %d prompts longer than buffer.data.max_prompt_tokens=%s",
                self.path,
                self.num_filtered_long,
                cfg.max_prompt_tokens,
            )
        self._rows = [rows[i] for i in keep]
        self._prompt_ids = [np.asarray(prompt_ids[i], dtype=np.int32) for i in keep]
        if not self._rows:
            raise DataError(
                f"{self.path}: no usable prompts ({self.num_bad_rows} malformed rows, "
                f"{self.num_filtered_long} longer than max_prompt_tokens, {self.num_over_context} over the engines' "
                "context)"
            )
        self.order = PassOrder(len(self._rows), self.seed, shuffle=self.shuffle)  # order(epoch): row indices

    def __len__(self) -> int:
        return len(self._rows)

    def make_group(self, row: int) -> Group:
        """A group of `n_samples_per_prompt` pending samples for row `row`, with fresh uuid4-hex ids."""
        group_id = uuid.uuid4().hex
        data = self._rows[row]
        samples = [
            Sample(
                uid=uuid.uuid4().hex,
                group_id=group_id,
                index=i,
                prompt_ids=self._prompt_ids[row].copy(),
                label=data.label,
                metadata=dict(data.metadata),
            )
            for i in range(self.n_samples_per_prompt)
        ]
        return Group(group_id=group_id, samples=samples)

    def take(self, cursor: Cursor, num_groups: int) -> tuple[list[Group], Cursor]:
        """The next `num_groups` groups from `cursor` (crossing epochs as needed) and the cursor after them."""
        groups = []
        epoch, offset = cursor.epoch, cursor.offset
        for _ in range(num_groups):
            groups.append(self.make_group(int(self.order(epoch)[offset])))
            offset += 1
            if offset == len(self._rows):
                epoch, offset = epoch + 1, 0
        return groups, Cursor(epoch, offset)

    def fingerprint(self) -> dict[str, int]:
        """What must match for a stored cursor to mean the same rows."""
        return {"seed": self.seed, "shuffle": int(self.shuffle), "num_rows": len(self._rows)}

    def _parse(self, cfg: DataConfig) -> Iterator[_Row | None]:
        for where, record in _read_records(self.path, cfg):
            try:
                yield _parse_row(where, record, cfg)
            except DataError as err:
                if cfg.on_bad_row == "error":
                    raise DataError(f"{where}: {err}; fix the row or set buffer.data.on_bad_row=skip") from None
                self.num_bad_rows += 1
                logger.warning("%s: skipped malformed row: %s", where, err)
                yield None

    def _fits(self, where: str, num_tokens: int, context_len: int, max_new_tokens: int, cfg: DataConfig) -> bool:
        """True if the engines accept this prompt with `max_new_tokens` to generate; else raise or count it.

        Mirrors SGLang's check (REFERENCE.md §1): the input must leave room for one token, and input plus
        `max_new_tokens` must fit the context.
        """
        total = num_tokens + max_new_tokens
        if num_tokens < context_len and total <= context_len:
            return True
        problem = (
            f"prompt has {num_tokens} tokens and max_new_tokens={max_new_tokens}: "
            f"{num_tokens} + {max_new_tokens} = {total} > {context_len} tokens, the engines' context"
            if total > context_len
            else f"prompt has {num_tokens} tokens, which fills the engines' context of {context_len} tokens"
        )
        if cfg.on_bad_row == "error":
            raise DataError(
                f"{where}: {problem}; shorten the prompt, lower rollout.max_new_tokens (eval.max_new_tokens for "
                "the eval set), drop long prompts with buffer.data.max_prompt_tokens, or set "
                "buffer.data.on_bad_row=skip"
            )
        self.num_over_context += 1
        logger.warning("%s: skipped prompt the engines cannot serve: %s", where, problem)
        return False


def _read_records(path: Path, cfg: DataConfig) -> Iterator[tuple[str, Any]]:
    """(location, record) pairs; a record that is not valid JSON comes back as a DataError to report."""
    if not path.is_file():
        raise DataError(f"prompt file {path} does not exist; check buffer.data.path")
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    record = DataError(f"invalid JSON ({err.msg} at column {err.colno})")
                yield f"{path}:{number}", record
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        needed = [k for k in (cfg.prompt_key, cfg.label_key, *cfg.metadata_keys) if k is not None]
        missing = [k for k in needed if k not in table.column_names]
        if missing:
            raise DataError(
                f"{path}: no column {missing} (columns: {table.column_names}); check buffer.data.prompt_key, "
                "label_key and metadata_keys"
            )
        for number, record in enumerate(table.select(needed).to_pylist(), start=1):
            yield f"{path} row {number}", record
    else:
        raise DataError(f"prompt file {path} must end in .jsonl or .parquet")


def _parse_row(where: str, record: Any, cfg: DataConfig) -> _Row:
    if isinstance(record, DataError):
        raise record
    if not isinstance(record, dict):
        raise DataError(f"row must be a JSON object, got {type(record).__name__}")
    if cfg.prompt_key not in record:
        raise DataError(f"missing prompt key {cfg.prompt_key!r}")
    prompt = record[cfg.prompt_key]
    if isinstance(prompt, list) and cfg.apply_chat_template:
        if not all(isinstance(m, dict) and isinstance(m.get("role"), str) and "content" in m for m in prompt):
            raise DataError(f"{cfg.prompt_key!r} must be a list of {{'role', 'content'}} messages")
    elif not isinstance(prompt, str) or not prompt:
        raise DataError(f"{cfg.prompt_key!r} must be a non-empty string (messages need apply_chat_template=true)")
    label = None
    if cfg.label_key is not None:
        if record.get(cfg.label_key) is None:
            raise DataError(f"missing or null label {cfg.label_key!r} (set buffer.data.label_key=null for no labels)")
        value = record[cfg.label_key]
        label = value if isinstance(value, str) else json.dumps(value)
    metadata = {}
    for key in cfg.metadata_keys:
        if key not in record:
            raise DataError(f"missing metadata key {key!r}")
        metadata[key] = record[key]
    try:
        msgpack.packb(metadata)
    except (TypeError, ValueError, OverflowError) as err:
        raise DataError(f"metadata is not msgpack-serialisable ({err})") from err
    return _Row(where=where, prompt=prompt, label=label, metadata=metadata)


def _tokenize(tokenizer: PreTrainedTokenizerBase, prompts: list[Any], chat: bool) -> list[list[int]]:
    if not prompts:
        return []
    if chat:
        messages = [[{"role": "user", "content": p}] if isinstance(p, str) else p for p in prompts]
        texts = [tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in messages]
        return tokenizer(texts, add_special_tokens=False)["input_ids"]
    return tokenizer(prompts)["input_ids"]


def load_cursor(buffer: RedisBuffer, dataset: PromptDataset) -> Cursor:
    """The stored cursor of this run (0, 0 for a new run). Raises if the run was started on other data."""
    return _check_cursor(buffer.run_id, buffer.client.hgetall(buffer.keys.dataset), dataset)


def _check_cursor(run_id: str, state: dict[bytes, bytes], dataset: PromptDataset) -> Cursor:
    if not state:
        return Cursor(0, 0)
    stored = {key.decode(): int(value) for key, value in state.items()}
    expected = dataset.fingerprint()
    if any(stored.get(key) != value for key, value in expected.items()):
        raise DataError(
            f"run {run_id!r} was started on { ({k: stored.get(k) for k in expected}) } but this dataset has "
            f"{expected}; resume with the same data, seed and buffer.data.shuffle, or use a new buffer.run_id"
        )
    return Cursor(stored["epoch"], stored["offset"])


def fill_prompts(buffer: RedisBuffer, dataset: PromptDataset, min_groups: int) -> int:
    """Top the `prompts` list up to at least `min_groups` groups; returns how many groups were added.

    The groups and the advanced cursor are written in one MULTI/EXEC guarded by WATCH on the `dataset` hash,
    so concurrent fillers never issue a row twice and a crash never skips one.
    """
    keys = buffer.keys
    with buffer.client.pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(keys.dataset)
                cursor = _check_cursor(buffer.run_id, pipe.hgetall(keys.dataset), dataset)
                missing = min_groups - pipe.llen(keys.prompts)
                if missing <= 0:
                    pipe.unwatch()
                    return 0
                groups, after = dataset.take(cursor, missing)
                pipe.multi()
                pipe.rpush(keys.prompts, *[encode_group(g) for g in groups])
                pipe.hset(
                    keys.dataset,
                    mapping={
                        "epoch": after.epoch,
                        "offset": after.offset,
                        **dataset.fingerprint(),
                        "num_bad_rows": dataset.num_bad_rows,
                        "num_filtered_long": dataset.num_filtered_long,
                        "num_over_context": dataset.num_over_context,
                    },
                )
                pipe.execute()
                return missing
            except redis.WatchError:
                continue  # another filler advanced the cursor first; recompute from its position
