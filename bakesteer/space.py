"""Disk space: what a conversion writes beside its output, checked before calibrating, and a full disk named.

Everything a conversion writes lands on the output's filesystem: the staging directory (renamed into place), the
scratch directory (a dequantized GGUF copy, an offload folder) and spilled reference logits. A linked output writes
only the bias shard and small files; a rewrite (a cast, a bias added to, a tensor transform, a source on another
filesystem) writes the whole checkpoint.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bakesteer.architectures import ArchitectureSpec, Strategy
from bakesteer.configfiles import small_files
from bakesteer.errors import DiskSpaceError, OutputLocationError
from bakesteer.source import ModelSource, checkpoint_dtype
from bakesteer.validation import SPILL_BYTES
from bakesteer.writer import free_bytes

#: The card, its plots, bakesteer.json, steering.safetensors and config.json: generously.
SMALL_OUTPUT_BYTES = 4 * 1024**2
#: Headroom above the estimate (filesystem blocks, metadata, the estimate's own slack).
MARGIN = 1.05


def _device_of(path: Path) -> int:
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path.stat().st_dev


def gguf_copy_bytes(path: Path, dtype: torch.dtype) -> int:
    """Size of the plain safetensors copy a GGUF file is dequantized into."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    itemsize = torch.empty(0, dtype=dtype).element_size()
    return sum(int(t.n_elements) for t in reader.tensors) * itemsize


def output_bytes(source: ModelSource, spec: ArchitectureSpec, config: Any, dtype: torch.dtype, output: Path) -> int:
    """What writing the output takes on its filesystem: the bias shard and small files for a linked output, the
    whole checkpoint for a rewrite."""
    weights = sum((source.directory / name).stat().st_size for name in source.weight_files)
    text = config.get_text_config()
    hidden = int(text.hidden_size)
    inner = int(getattr(text, "intermediate_size", None) or 4 * hidden)
    biases = int(text.num_hidden_layers) * (hidden + 2 * inner) * 4
    rewrite = (
        _device_of(source.directory) != _device_of(output)
        or checkpoint_dtype(source) != dtype
        or spec.strategy is Strategy.EXISTING_BIAS
        or (spec.remap is not None and spec.remap.rewrite is not None)
    )
    small = sum((source.directory / name).stat().st_size for name in small_files(source.directory))
    return (weights if rewrite else 0) + biases + small + SMALL_OUTPUT_BYTES


def spill_bytes(probes: list[list[int]], greedy_tokens: int, vocab: int) -> int:
    """Reference logits spilled to a file beside the output (see :class:`bakesteer.validation.LogitStore`)."""
    positions = sum(len(p) for p in probes) + greedy_tokens * min(2, len(probes))
    size = positions * vocab * 4
    return size if size >= SPILL_BYTES else 0


def require_space(output: Path, needed: int) -> None:
    """Refuse to go on when the output's filesystem has less than ``needed`` bytes (with a margin) free.

    Raises:
        DiskSpaceError: too little is free.
    """
    free = free_bytes(output)
    if free < needed * MARGIN:
        raise DiskSpaceError(Path(output).absolute().parent, needed=needed, free=free)


@dataclass
class Budget:
    """What a conversion has estimated it writes beside its output so far (bytes)."""

    needed: int = 0


@contextmanager
def named_disk_errors(output: Path) -> Iterator[Budget]:
    """Turn a full disk (ENOSPC, EDQUOT) or a filesystem that refuses a write beside the output (EROFS, EACCES) into
    one named error. Used outside the :class:`~bakesteer.writer.AtomicDirectory`, which has already removed its
    staging and scratch files by then. Yields the :class:`Budget` the conversion fills in."""
    budget = Budget()
    parent = Path(output).absolute().parent
    try:
        yield budget
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskSpaceError(parent, needed=budget.needed, free=free_bytes(output)) from None
        where = Path(os.fsdecode(err.filename)).absolute() if err.filename else None
        if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM) and where is not None and parent in where.parents:
            raise OutputLocationError(output, where.parent, f"refused the write ({err.strerror})") from None
        raise
