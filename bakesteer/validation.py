"""Validation: the baked checkpoint, reloaded from disk with plain transformers, must match the hooked model.

Reference outputs are computed on the source model with steering hooks *before* it is freed; the written directory
is then reloaded with ``AutoModelForCausalLM.from_pretrained`` (no bakesteer code involved) and compared. Only one
model is ever in memory.

Tolerances: in float32 the relative logit difference ``max|baked - hooked| / max|hooked|`` must be at most 1e-4.
In bf16/fp16 no fixed constant is meaningful, so the bound comes from a floor measured in the same run: the hooked
model in low precision against the same hooked model in float32. Both the baked and the hooked low-precision models
are about one floor away from the float32 truth, so by the triangle inequality they may differ by up to two floors.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bakesteer.architectures import ArchitectureSpec
from bakesteer.batching import left_padded_batches
from bakesteer.errors import ValidationError
from bakesteer.hooks import steering
from bakesteer.progress import bar

logger = logging.getLogger(__name__)

FP32_TOLERANCE = 1e-4
FLOOR_FACTOR = 2.0


@dataclass
class Outputs:
    """Logits at every real token of the probes (float32, CPU, ``[tokens, vocab]``) and greedy continuations."""

    logits: torch.Tensor
    greedy: list[list[int]]


@dataclass
class Reference:
    """What the baked checkpoint is compared with.

    Attributes:
        hooked: The source model with steering hooks, in the output dtype.
        base: The source model without hooks, in the output dtype (a no-op bake must not pass).
        hooked_fp32: The hooked model in float32, for the floor (``None`` when the output is float32).
        dtype: The output dtype.
    """

    hooked: Outputs
    base: Outputs
    hooked_fp32: Outputs | None
    dtype: torch.dtype


@dataclass
class ValidationReport:
    """Every number validation measured. ``passed`` is true only when all checks passed."""

    dtype: str
    probes: int
    positions: int
    tolerance: float
    tolerance_basis: str
    floor_relative: float | None
    max_abs_logit: float
    max_abs_diff: float
    relative_diff: float
    mean_kl: float
    greedy_tokens: int
    greedy_equal: bool
    greedy_first_mismatch: int | None
    base_relative_diff: float
    hooked_vs_base_relative_diff: float
    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)
    passed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def _outputs(
    model: nn.Module, probes: list[list[int]], *, batch_size: int, pad_id: int, greedy_tokens: int, desc: str
) -> Outputs:
    device = next(model.parameters()).device
    chunks: list[tuple[int, torch.Tensor]] = []
    for batch in bar(left_padded_batches(probes, batch_size, pad_id), desc=desc, unit="batch"):
        batch = batch.to(device)
        logits = model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            use_cache=False,
        ).logits
        for row, index in enumerate(batch.indices):
            real = batch.attention_mask[row].bool()
            chunks.append((index, logits[row][real].float().cpu()))
    chunks.sort(key=lambda item: item[0])
    greedy: list[list[int]] = []
    for batch in left_padded_batches(probes[:2], 2, pad_id):
        batch = batch.to(device)
        generated = model.generate(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            do_sample=False,
            max_new_tokens=greedy_tokens,
            min_new_tokens=greedy_tokens,
            pad_token_id=pad_id,
            use_cache=True,
        )
        order = {index: row for row, index in enumerate(batch.indices)}
        width = batch.input_ids.shape[1]
        greedy = [generated[order[i], width:].tolist() for i in range(len(batch.indices))]
    return Outputs(torch.cat([c for _, c in chunks]), greedy)


def reference_outputs(
    model: nn.Module,
    spec: ArchitectureSpec,
    offsets: torch.Tensor,
    probes: list[list[int]],
    *,
    batch_size: int,
    pad_id: int,
    greedy_tokens: int,
) -> Reference:
    """Hooked and unhooked outputs of the source model, plus the hooked float32 floor for low precision.

    For a low-precision model this casts ``model`` to float32 in place (lossless; the caller frees it next).
    """
    dtype = next(model.parameters()).dtype
    kwargs = {"batch_size": batch_size, "pad_id": pad_id, "greedy_tokens": greedy_tokens}
    with steering(model, spec, offsets):
        hooked = _outputs(model, probes, desc="reference (hooked)", **kwargs)
    base = _outputs(model, probes, desc="reference (base)", **kwargs)
    hooked_fp32 = None
    if dtype != torch.float32:
        model.float()
        with steering(model, spec, offsets):
            hooked_fp32 = _outputs(model, probes, desc="reference (hooked, float32)", **kwargs)
    return Reference(hooked, base, hooked_fp32, dtype)


def relative_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max|a - b| / max|b|``."""
    return float((a - b).abs().max() / b.abs().max())


def mean_kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> float:
    """Mean over positions of KL(p || q) between next-token distributions, computed in float64."""
    log_p = torch.log_softmax(p_logits.double(), dim=-1)
    log_q = torch.log_softmax(q_logits.double(), dim=-1)
    return float((log_p.exp() * (log_p - log_q)).sum(dim=-1).mean())


def _first_mismatch(a: list[list[int]], b: list[list[int]]) -> int | None:
    for seq_a, seq_b in zip(a, b):
        for step, (x, y) in enumerate(zip(seq_a, seq_b)):
            if x != y:
                return step
        if len(seq_a) != len(seq_b):
            return min(len(seq_a), len(seq_b))
    return None


def tolerance_for(reference: Reference) -> tuple[float, str, float | None]:
    """The relative logit tolerance, a sentence saying where it comes from, and the measured floor (if any)."""
    if reference.hooked_fp32 is None:
        return FP32_TOLERANCE, "float32: fixed 1e-4 of max|logit|", None
    floor = relative_diff(reference.hooked.logits, reference.hooked_fp32.logits)
    tolerance = max(FLOOR_FACTOR * floor, FP32_TOLERANCE)
    return tolerance, f"{FLOOR_FACTOR:g} x the floor measured in this run ({floor:.3g})", floor


def validate_checkpoint(
    directory: Path,
    reference: Reference,
    probes: list[list[int]],
    *,
    expected_keys: set[str],
    config_updates: dict[str, Any] | None = None,
    alpha: float,
    device: torch.device,
    batch_size: int,
    pad_id: int,
    greedy_tokens: int,
) -> ValidationReport:
    """Reload ``directory`` with plain transformers and compare it with ``reference``.

    Raises:
        ValidationError: missing/unexpected keys, a config that does not round-trip (or reloads quantized), a
            bias absent after reload, logits beyond the tolerance, a
            float32 greedy mismatch, or a checkpoint that equals the base although ``alpha != 0``.
    """
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(
        directory, dtype=reference.dtype, use_safetensors=True, output_loading_info=True
    )
    model.to(device).eval()
    missing = sorted(info.get("missing_keys", []))
    unexpected = sorted(info.get("unexpected_keys", []))
    mismatched = [str(m) for m in info.get("mismatched_keys", [])]
    state_keys = set(model.state_dict())
    absent = sorted(expected_keys - state_keys)
    config_problems = [
        f"{key}={getattr(model.config, key, None)!r} (wrote {value!r})"
        for key, value in (config_updates or {}).items()
        if getattr(model.config, key, None) != value
    ]
    if getattr(model.config, "quantization_config", None) or getattr(model, "hf_quantizer", None):
        config_problems.append("the reloaded model is quantized")
    baked = _outputs(
        model, probes, batch_size=batch_size, pad_id=pad_id, greedy_tokens=greedy_tokens, desc="validating"
    )
    del model

    tolerance, basis, floor = tolerance_for(reference)
    hooked = reference.hooked.logits
    diff = float((baked.logits - hooked).abs().max())
    scale = float(hooked.abs().max())
    report = ValidationReport(
        dtype=str(reference.dtype).removeprefix("torch."),
        probes=len(probes),
        positions=int(hooked.shape[0]),
        tolerance=tolerance,
        tolerance_basis=basis,
        floor_relative=floor,
        max_abs_logit=scale,
        max_abs_diff=diff,
        relative_diff=diff / scale,
        mean_kl=mean_kl(hooked, baked.logits),
        greedy_tokens=greedy_tokens,
        greedy_equal=baked.greedy == reference.hooked.greedy,
        greedy_first_mismatch=_first_mismatch(baked.greedy, reference.hooked.greedy),
        base_relative_diff=relative_diff(baked.logits, reference.base.logits),
        hooked_vs_base_relative_diff=relative_diff(hooked, reference.base.logits),
        missing_keys=missing,
        unexpected_keys=unexpected,
    )
    data = report.to_dict()
    if missing or unexpected or mismatched:
        raise ValidationError(
            "keys",
            f"plain reload reported missing {missing[:3]}, unexpected {unexpected[:3]}, mismatched {mismatched[:3]}",
            report=data,
        )
    if config_problems:
        raise ValidationError("config", "config did not round-trip: " + ", ".join(config_problems), report=data)
    if absent:
        raise ValidationError("bias", f"{len(absent)} baked bias(es) absent after reload, e.g. {absent[0]}", report=data)
    if not math.isfinite(report.relative_diff) or report.relative_diff > tolerance:
        raise ValidationError(
            "logits",
            f"max|logit diff| is {report.relative_diff:.3g} of max|logit|, above the tolerance {tolerance:.3g} ({basis})",
            report=data,
        )
    if reference.hooked_fp32 is None and not report.greedy_equal:
        raise ValidationError(
            "greedy", f"float32 greedy continuation differs at step {report.greedy_first_mismatch}", report=data
        )
    if alpha != 0 and report.base_relative_diff <= tolerance:
        effect = report.hooked_vs_base_relative_diff
        raise ValidationError(
            "no-op",
            f"the baked model equals the base (diff {report.base_relative_diff:.3g}, tolerance {tolerance:.3g}; the "
            f"hooked model differs from the base by {effect:.3g})"
            + ("; the steering is too weak to verify, use a larger --alpha" if effect <= tolerance else ""),
            report=data,
        )
    report.passed = True
    logger.info("validation passed: relative diff %.3g <= %.3g (%s)", report.relative_diff, tolerance, basis)
    return report
