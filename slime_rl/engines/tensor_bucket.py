"""SGLang's flattened bucket: many tensors sent as one byte buffer in one broadcast.

`POST /update_weights_from_distributed` with `"load_format": "flattened_bucket"` (SGLang 0.5.15.post1 and
0.5.23: `FlattenedTensorBucket` in python/sglang/srt/weight_sync/tensor_bucket.py) announces the bucket's
`names`, `dtypes` and `shapes`; rank 0 then broadcasts one uint8 tensor holding each tensor's bytes,
flattened, one after another in `names` order, with no padding. SGLang 0.5.23 refuses a tensor whose byte
offset is not a multiple of its dtype's size, so a sender keeps every offset aligned (`is_aligned`).
One broadcast per bucket instead of one per tensor is what makes publishing bandwidth-bound.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

FLATTENED_BUCKET = "flattened_bucket"  # the load_format value


def flatten(tensors: Sequence[torch.Tensor], out: torch.Tensor | None = None) -> torch.Tensor:
    """The bucket's uint8 buffer: every tensor's bytes in order (one copy), on the tensors' device; written into
    the front of `out` (a uint8 tensor at least that long) when given, which saves allocating it each time."""
    parts = [t.contiguous().reshape(-1).view(torch.uint8) for t in tensors]
    if out is None:
        return torch.cat(parts)
    return torch.cat(parts, out=out[: sum(p.numel() for p in parts)])


def is_aligned(offset: int, dtype: torch.dtype) -> bool:
    """Whether a tensor of `dtype` may start at byte `offset` of a bucket (SGLang 0.5.23's check)."""
    return offset % dtype.itemsize == 0


def byte_ranges(dtypes: Sequence[torch.dtype], shapes: Sequence[Sequence[int]]) -> list[tuple[int, int]]:
    """(start, end) byte offsets of each tensor in the bucket; ValueError for a misaligned tensor."""
    ranges = []
    offset = 0
    for dtype, shape in zip(dtypes, shapes, strict=True):
        if not is_aligned(offset, dtype):
            raise ValueError(f"a {dtype} tensor cannot start at byte {offset} of a flattened bucket (misaligned)")
        size = torch.Size(shape).numel() * dtype.itemsize
        ranges.append((offset, offset + size))
        offset += size
    return ranges


def unflatten(
    buffer: torch.Tensor, dtypes: Sequence[torch.dtype], shapes: Sequence[Sequence[int]]
) -> list[torch.Tensor]:
    """Views of the received `buffer` as the bucket's tensors (no copy)."""
    ranges = byte_ranges(dtypes, shapes)
    if buffer.numel() != (ranges[-1][1] if ranges else 0):
        raise ValueError(f"a flattened bucket of {buffer.numel()} bytes does not hold the announced tensors")
    return [
        buffer[start:end].view(dtype).reshape(shape)
        for (start, end), dtype, shape in zip(ranges, dtypes, shapes, strict=True)
    ]
