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
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bakesteer.architectures import ArchitectureSpec
from bakesteer.batching import Batch, left_padded_batches
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

    Only the hooked logits are kept at every position; the rest is reduced as soon as it is measured, so the
    reference costs one ``[tokens, vocab]`` tensor while the source model is swapped for the written one.

    Attributes:
        hooked: The source model with steering hooks, in the output dtype.
        base_last: The unhooked source model's logits at each probe's last token (a no-op bake must not pass).
        lengths: Token count of each probe (rows of ``hooked.logits`` per probe).
        floor: ``max|hooked - hooked in float32| / max|hooked in float32|`` (``None`` when the output is float32).
        floor_greedy_equal: Whether the float32 hooked model continues the same way (``None`` in float32).
        dtype: The output dtype.
    """

    hooked: Outputs
    base_last: torch.Tensor
    lengths: list[int]
    floor: float | None
    floor_greedy_equal: bool | None
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
    floor_greedy_equal: bool | None
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


def _batches_logits(
    model: Any, probes: list[list[int]], *, batch_size: int, pad_id: int, desc: str, **forward: Any
) -> Iterator[tuple[Batch, torch.Tensor]]:
    device = next(model.parameters()).device
    total = -(-len(probes) // batch_size)
    for batch in bar(left_padded_batches(probes, batch_size, pad_id), desc=desc, total=total, unit="batch"):
        batch = batch.to(device)
        logits = model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            use_cache=False,
            **forward,
        ).logits
        yield batch, logits


@torch.no_grad()
def last_token_logits(model: Any, probes: list[list[int]], *, batch_size: int, pad_id: int, desc: str) -> torch.Tensor:
    """Logits at each probe's last token only (``logits_to_keep=1``: no ``[tokens, vocab]`` tensor is built)."""
    vocab = int(model.get_output_embeddings().weight.shape[0])
    out = torch.empty(len(probes), vocab, dtype=torch.float32)
    for batch, logits in _batches_logits(
        model, probes, batch_size=batch_size, pad_id=pad_id, desc=desc, logits_to_keep=1
    ):
        out[batch.indices] = logits[:, -1].float().cpu()  # left padding: the last position is the last real token
    return out


@torch.no_grad()
def stream_logits(
    model: Any, probes: list[list[int]], *, batch_size: int, pad_id: int, desc: str
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(probe index, float32 CPU logits at its real tokens)``, one probe at a time, batch by batch."""
    for batch, logits in _batches_logits(model, probes, batch_size=batch_size, pad_id=pad_id, desc=desc):
        for row, index in enumerate(batch.indices):
            yield index, logits[row][batch.attention_mask[row].bool()].float().cpu()


@torch.no_grad()
def greedy_continuations(model: Any, probes: list[list[int]], *, pad_id: int, tokens: int) -> list[list[int]]:
    """``tokens`` greedily decoded tokens (KV cache on, EOS not allowed to stop early) after each probe."""
    device = next(model.parameters()).device
    out: dict[int, list[int]] = {}
    for batch in left_padded_batches(probes, len(probes), pad_id):
        batch = batch.to(device)
        generated = model.generate(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            do_sample=False,
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            pad_token_id=pad_id,
            use_cache=True,
        )
        width = batch.input_ids.shape[1]
        for row, index in enumerate(batch.indices):
            out[index] = generated[row, width:].tolist()
    return [out[i] for i in range(len(probes))]


def _offsets_of(probes: list[list[int]]) -> list[int]:
    starts = [0]
    for probe in probes:
        starts.append(starts[-1] + len(probe))
    return starts


def _outputs(
    model: Any, probes: list[list[int]], *, batch_size: int, pad_id: int, greedy_tokens: int, desc: str
) -> Outputs:
    starts = _offsets_of(probes)
    vocab = int(model.get_output_embeddings().weight.shape[0])
    out = torch.empty(starts[-1], vocab, dtype=torch.float32)  # filled in place: no concatenation copy
    for index, rows in stream_logits(model, probes, batch_size=batch_size, pad_id=pad_id, desc=desc):
        out[starts[index] : starts[index + 1]] = rows
    greedy = greedy_continuations(model, probes[:2], pad_id=pad_id, tokens=greedy_tokens)
    return Outputs(out, greedy)


@dataclass
class Comparison:
    """Streamed comparison of a model's logits with reference logits."""

    max_abs_diff: float
    max_abs: float
    kl_sum: float
    last: torch.Tensor


def compare_logits(
    stream: Iterator[tuple[int, torch.Tensor]], reference: torch.Tensor, probes: list[list[int]]
) -> Comparison:
    """Max |difference|, summed KL(reference || stream) and each probe's last-token logits, one probe at a time
    (the compared model's logits are never all in memory)."""
    starts = _offsets_of(probes)
    max_diff, max_abs, kl_sum = 0.0, 0.0, 0.0
    last = torch.empty(len(probes), reference.shape[1], dtype=torch.float32)
    for index, rows in stream:
        ref = reference[starts[index] : starts[index + 1]]
        max_diff = max(max_diff, float((rows - ref).abs().max()))
        max_abs = max(max_abs, float(rows.abs().max()))
        kl_sum += kl_total(ref, rows)
        last[index] = rows[-1]
    return Comparison(max_diff, max_abs, kl_sum, last)


def last_rows(logits: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """The row of each probe's last token in a ``[tokens, vocab]`` tensor of concatenated probes."""
    ends = torch.tensor(lengths).cumsum(0) - 1
    return logits[ends]


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
    lengths = [len(p) for p in probes]
    kwargs = {"batch_size": batch_size, "pad_id": pad_id, "greedy_tokens": greedy_tokens}
    with steering(model, spec, offsets):
        hooked = _outputs(model, probes, desc="reference (hooked)", **kwargs)
    base_last = last_token_logits(model, probes, batch_size=batch_size, pad_id=pad_id, desc="reference (base)")
    floor, floor_greedy = None, None
    if dtype != torch.float32:
        model.float()
        with steering(model, spec, offsets):
            exact = compare_logits(
                stream_logits(model, probes, batch_size=batch_size, pad_id=pad_id, desc="reference (float32)"),
                hooked.logits,
                probes,
            )
            exact_greedy = greedy_continuations(model, probes[:2], pad_id=pad_id, tokens=greedy_tokens)
        floor = exact.max_abs_diff / exact.max_abs
        floor_greedy = exact_greedy == hooked.greedy
    return Reference(hooked, base_last, lengths, floor, floor_greedy, dtype)


def relative_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max|a - b| / max|b|``."""
    return float((a - b).abs().max() / b.abs().max())


def kl_total(p_logits: torch.Tensor, q_logits: torch.Tensor, *, chunk: int = 16) -> float:
    """Sum over positions of KL(p || q) between next-token distributions, in float64, ``chunk`` rows at a time."""
    total = 0.0
    for start in range(0, p_logits.shape[0], chunk):
        log_p = torch.log_softmax(p_logits[start : start + chunk].double(), dim=-1)
        log_q = torch.log_softmax(q_logits[start : start + chunk].double(), dim=-1)
        total += float((log_p.exp() * (log_p - log_q)).sum())
    return total


def _first_mismatch(a: list[list[int]], b: list[list[int]]) -> int | None:
    for seq_a, seq_b in zip(a, b, strict=True):
        for step, (x, y) in enumerate(zip(seq_a, seq_b, strict=False)):
            if x != y:
                return step
        if len(seq_a) != len(seq_b):
            return min(len(seq_a), len(seq_b))
    return None


def tolerance_for(reference: Reference) -> tuple[float, str]:
    """The relative logit tolerance and a sentence saying where it comes from."""
    if reference.floor is None:
        return FP32_TOLERANCE, "float32: fixed 1e-4 of max|logit|"
    tolerance = max(FLOOR_FACTOR * reference.floor, FP32_TOLERANCE)
    return tolerance, f"{FLOOR_FACTOR:g} x the floor measured in this run ({reference.floor:.3g})"


def _check_plain_load_refused(directory: Path) -> None:
    """A remote-code checkpoint must fail loudly without trust_remote_code (never load unsteered)."""
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(directory, trust_remote_code=False)
    except ValueError:
        return
    raise ValidationError("config", "the remote-code checkpoint loads without trust_remote_code (unsteered)")


def validate_checkpoint(
    directory: Path,
    reference: Reference,
    probes: list[list[int]],
    *,
    expected_keys: set[str],
    config_updates: dict[str, Any] | None = None,
    trust_remote_code: bool = False,
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

    if trust_remote_code:
        _check_plain_load_refused(directory)
    loaded: Any = AutoModelForCausalLM.from_pretrained(
        directory,
        dtype=reference.dtype,
        use_safetensors=True,
        output_loading_info=True,
        trust_remote_code=trust_remote_code,
    )
    model, info = loaded
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
    baked = compare_logits(
        stream_logits(model, probes, batch_size=batch_size, pad_id=pad_id, desc="validating"),
        reference.hooked.logits,
        probes,
    )
    baked_greedy = greedy_continuations(model, probes[:2], pad_id=pad_id, tokens=greedy_tokens)
    del model, loaded

    tolerance, basis = tolerance_for(reference)
    hooked = reference.hooked.logits
    diff = baked.max_abs_diff
    scale = float(hooked.abs().max())
    report = ValidationReport(
        dtype=str(reference.dtype).removeprefix("torch."),
        probes=len(probes),
        positions=int(hooked.shape[0]),
        tolerance=tolerance,
        tolerance_basis=basis,
        floor_relative=reference.floor,
        floor_greedy_equal=reference.floor_greedy_equal,
        max_abs_logit=scale,
        max_abs_diff=diff,
        relative_diff=diff / scale,
        mean_kl=baked.kl_sum / int(hooked.shape[0]),
        greedy_tokens=greedy_tokens,
        greedy_equal=baked_greedy == reference.hooked.greedy,
        greedy_first_mismatch=_first_mismatch(baked_greedy, reference.hooked.greedy),
        base_relative_diff=relative_diff(baked.last, reference.base_last),
        hooked_vs_base_relative_diff=relative_diff(last_rows(hooked, reference.lengths), reference.base_last),
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
        raise ValidationError(
            "bias", f"{len(absent)} baked bias(es) absent after reload, e.g. {absent[0]}", report=data
        )
    if not math.isfinite(report.relative_diff) or report.relative_diff > tolerance:
        raise ValidationError(
            "logits",
            f"max|logit diff| is {report.relative_diff:.3g} of max|logit|, "
            f"above the tolerance {tolerance:.3g} ({basis})",
            report=data,
        )
    if reference.floor is None and not report.greedy_equal:
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
