"""Calibration: mean residual norms ``mu_l`` and difference-of-means directions ``c_l``.

The residual at layer ``l`` is the output of decoder block ``l`` (0-based), before the final norm; transformers'
``hidden_states[-1]`` is after the final norm, so hooks on the blocks are used instead of ``output_hidden_states``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bakesteer.architectures import ArchitectureSpec
from bakesteer.batching import left_padded_batches
from bakesteer.errors import PromptContentError
from bakesteer.hooks import decoder_layers, layer_hooks
from bakesteer.placement import input_device
from bakesteer.progress import bar

logger = logging.getLogger(__name__)


@dataclass
class ResidualStatistics:
    """Sums over one prompt set, accumulated in float64 from float32 activations.

    Attributes:
        norm_sum: ``[L]`` sum of residual L2 norms over counted tokens (real tokens except each sequence's first).
        token_count: Number of counted tokens.
        last_sum: ``[L, d]`` sum of the residual at each sequence's last real token.
        sequences: Number of sequences.
    """

    norm_sum: torch.Tensor
    token_count: int
    last_sum: torch.Tensor
    sequences: int


@torch.no_grad()
def residual_statistics(
    model: nn.Module,
    spec: ArchitectureSpec,
    sequences: list[list[int]],
    *,
    batch_size: int,
    pad_id: int,
    desc: str = "calibrating",
) -> ResidualStatistics:
    """Run the decoder stack (no LM head) over ``sequences`` and accumulate residual statistics per layer.

    Position 0 of every sequence is excluded from the norms: it is the attention-sink token, whose residual norm is
    orders of magnitude larger than the rest (about 100x on SmolLM2) and would dominate the mean. Padding is
    excluded through the attention mask. Batches are left-padded, so each row's last real token is at ``-1``.
    """
    num_layers = len(decoder_layers(model, spec))
    d_model = int(model.config.get_text_config().hidden_size)  # type: ignore[union-attr,operator]
    device = input_device(model)
    norm_sum = torch.zeros(num_layers, dtype=torch.float64)
    last_sum = torch.zeros(num_layers, d_model, dtype=torch.float64)
    state: dict[str, torch.Tensor] = {}

    def record(index: int, hidden: torch.Tensor) -> None:
        h = hidden.float()
        norms = torch.linalg.vector_norm(h, dim=-1)
        norm_sum[index] += (norms * state["counted"]).sum(dtype=torch.float64).cpu()
        last_sum[index] += h[:, -1, :].sum(dim=0, dtype=torch.float64).cpu()
        return None

    backbone = model.get_submodule(spec.backbone)
    token_count = 0
    batches = left_padded_batches(sequences, batch_size, pad_id)
    total = -(-len(sequences) // batch_size)
    with layer_hooks(model, spec, record):
        for batch in bar(batches, desc=desc, total=total, unit="batch"):
            batch = batch.to(device)
            mask = batch.attention_mask
            # Exclude padding and each sequence's first real token (position id 0).
            counted = (mask.bool() & (batch.position_ids > 0)).to(torch.float32)
            state["counted"] = counted
            token_count += int(counted.sum().item())
            backbone(
                input_ids=batch.input_ids,
                attention_mask=mask,
                position_ids=batch.position_ids,
                use_cache=False,
            )
    return ResidualStatistics(norm_sum, token_count, last_sum, len(sequences))


def mean_norms(*stats: ResidualStatistics) -> torch.Tensor:
    """``mu_l``: mean residual norm over all counted tokens of all the given sets, as float32 ``[L]``."""
    tokens = sum(s.token_count for s in stats)
    if tokens == 0:
        raise PromptContentError(
            "no calibration token was counted (every prompt is a single token, and position 0 is left out)",
            hint="use prompts of several words",
        )
    return (sum(s.norm_sum for s in stats) / tokens).to(torch.float32)  # type: ignore[union-attr]


def difference_of_means(positive: ResidualStatistics, negative: ResidualStatistics) -> torch.Tensor:
    """Mean last-token residual of ``positive`` minus that of ``negative``, float64 ``[L, d]``, not normalised."""
    return positive.last_sum / positive.sequences - negative.last_sum / negative.sequences


def unit_directions(diff: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalise each row of ``diff`` to unit length.

    Returns:
        ``(directions, norms)``: float32 ``[L, d]`` (a zero row where the norm is zero or not finite, to be refused
        in the band by :func:`bakesteer.bake.compute_offsets`) and the float64 norms ``[L]``.
    """
    norms = torch.linalg.vector_norm(diff, dim=-1)
    ok = torch.isfinite(norms) & (norms > 0)
    safe = torch.where(ok, norms, torch.ones_like(norms))
    directions = torch.where(ok[:, None], diff / safe[:, None], torch.zeros_like(diff))
    return directions.to(torch.float32), norms


@torch.no_grad()
def sequence_residuals(
    model: nn.Module,
    spec: ArchitectureSpec,
    sequences: list[list[int]],
    *,
    layers: list[int],
    reduce: str,
    batch_size: int,
    pad_id: int,
) -> torch.Tensor:
    """One residual per sequence at each of ``layers``, float64 ``[N, len(layers), d]`` on the CPU.

    Args:
        reduce: ``last``: the residual at each sequence's last token (the calibration's reading); ``mean``: the mean
            over its tokens, padding and position 0 (the attention sink, as in ``mu``) excluded, so every sequence
            needs at least two tokens.
    """
    if reduce not in ("last", "mean"):
        raise ValueError(f"unknown reduction {reduce!r}")
    if reduce == "mean" and any(len(s) < 2 for s in sequences):
        raise ValueError("a mean residual excluding position 0 needs sequences of at least two tokens")
    d_model = int(model.config.get_text_config().hidden_size)  # type: ignore[union-attr,operator]
    device = input_device(model)
    slot = {layer: i for i, layer in enumerate(layers)}
    out = torch.zeros(len(sequences), len(layers), d_model, dtype=torch.float64)
    state: dict[str, Any] = {}
    last_layer = max(layers)

    def record(index: int, hidden: torch.Tensor) -> None:
        if index not in slot:
            return None
        h = hidden.float()
        if reduce == "last":
            values = h[:, -1, :].double()
        else:
            counted = state["counted"]
            values = (h * counted[..., None]).sum(dim=1, dtype=torch.float64) / counted.sum(dim=1, dtype=torch.float64)[
                :, None
            ]
        out[state["indices"], slot[index]] = values.cpu()
        if index == last_layer:
            raise _StopForward  # the blocks above the last layer read would be computed for nothing
        return None

    backbone = model.get_submodule(spec.backbone)
    with layer_hooks(model, spec, record):
        for batch in left_padded_batches(sequences, batch_size, pad_id):
            batch = batch.to(device)
            state["indices"] = batch.indices
            state["counted"] = (batch.attention_mask.bool() & (batch.position_ids > 0)).to(torch.float32)
            try:
                backbone(
                    input_ids=batch.input_ids,
                    attention_mask=batch.attention_mask,
                    position_ids=batch.position_ids,
                    use_cache=False,
                )
            except _StopForward:
                pass
    return out


class _StopForward(Exception):
    """Raised by a hook to end a forward pass once the last needed block has run."""
