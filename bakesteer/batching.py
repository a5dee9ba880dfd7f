"""Left-padded, longest-first batches with explicit position ids."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Batch:
    """One left-padded batch.

    Attributes:
        indices: Positions of these sequences in the caller's list.
        input_ids: ``[B, T]``, left-padded.
        attention_mask: ``[B, T]``, 1 on real tokens.
        position_ids: ``[B, T]``, counting from 0 at each sequence's first real token, so a sequence gets the same
            rotary positions whatever padding its batch needs (results do not depend on the batch size).
    """

    indices: list[int]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor

    def to(self, device: torch.device | str) -> Batch:
        """The same batch on ``device``."""
        return Batch(
            self.indices, self.input_ids.to(device), self.attention_mask.to(device), self.position_ids.to(device)
        )


def left_padded_batches(sequences: Sequence[Sequence[int]], batch_size: int, pad_id: int) -> Iterator[Batch]:
    """Yield batches of ``sequences`` longest first (ties in input order), each left-padded to its longest.

    The last real token of every row is at position ``-1``.
    """
    if any(len(s) == 0 for s in sequences):
        raise ValueError("every sequence needs at least one token")
    order = sorted(range(len(sequences)), key=lambda i: (-len(sequences[i]), i))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = max(len(sequences[i]) for i in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):
            seq = torch.as_tensor(list(sequences[i]), dtype=torch.long)
            ids[row, width - len(seq) :] = seq
            mask[row, width - len(seq) :] = 1
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        yield Batch(chunk, ids, mask, positions)


def pad_token_id(tokenizer: object) -> int:
    """The tokenizer's pad id, else its EOS id, else 0 (padded positions are masked, so the value never matters)."""
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            return value
    return 0
