"""SGLang's flattened bucket: many tensors sent as one byte buffer in one broadcast.

`POST /update_weights_from_distributed` with `"load_format": "flattened_bucket"` (SGLang 0.5.15.post1 and
0.5.23: `FlattenedTensorBucket` in python/sglang/srt/weight_sync/tensor_bucket.py) announces the bucket's
`names`, `dtypes` and `shapes`; rank 0 then broadcasts one uint8 tensor holding each tensor's bytes,
flattened, one after another in `names` order, with no padding. SGLang 0.5.23 refuses a tensor whose byte
offset is not a multiple of its dtype's size, so a sender keeps every offset aligned (`is_aligned`).
One broadcast per bucket instead of one per tensor is what makes publishing bandwidth-bound. A sender whose
tensors already lie back to back in one storage (`lies_after`) sends that memory as the bucket (`bytes_in_place`)
instead of packing it (`flatten`).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch

FLATTENED_BUCKET = "flattened_bucket"  # the load_format value


def flatten(tensors: Sequence[torch.Tensor], out: torch.Tensor | None = None) -> torch.Tensor:
    """The bucket's uint8 buffer: every tensor's bytes in order (one copy), on the tensors' device; written into
    the front of `out` (a uint8 tensor at least that long) when given, which saves allocating it each time."""
    parts = [t.contiguous().reshape(-1).view(torch.uint8) for t in tensors]
    if out is None:
        return torch.cat(parts)
    return torch.cat(parts, out=out[: sum(p.numel() for p in parts)])


def lies_after(previous: torch.Tensor, tensor: torch.Tensor) -> bool:
    """Whether `tensor` starts in the same storage where `previous` ends, both contiguous and not empty."""
    return (
        previous.numel() > 0
        and tensor.numel() > 0
        and previous.is_contiguous()
        and tensor.is_contiguous()
        and previous.device == tensor.device
        and previous.untyped_storage().data_ptr() == tensor.untyped_storage().data_ptr()
        and previous.data_ptr() + previous.nbytes == tensor.data_ptr()
    )


def bytes_in_place(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The bucket's uint8 buffer as a view of the memory `tensors` fill, each `lies_after` the one before (no
    copy; the same bytes `flatten` would make)."""
    first, last = tensors[0], tensors[-1]
    if not all(lies_after(a, b) for a, b in pairwise(tensors)):
        raise ValueError("bytes_in_place needs tensors that lie back to back in one storage")
    start = first.storage_offset() * first.element_size()
    end = last.storage_offset() * last.element_size() + last.nbytes
    view = torch.empty(0, dtype=torch.uint8, device=first.device)
    return view.set_(first.untyped_storage(), start, (end - start,))


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
