"""``bakesteer audit``: find steering in any checkpoint, bakesteer's or not.

It reads each block's MLP output bias (the registry names where it sits), or its difference from a given base, and
turns it back into the offset it adds to the residual stream (times the family's divisor, e.g. Granite's residual
multiplier). Per layer it reports the offset's norm, the relative dose ``|v_l| / mu_l`` (``mu`` measured on the
shipped prompt sets, or read from a bakesteer record), the cosine with the previous layer's offset, and, given a
vector file, the cosine with its direction ``c_l``.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True)
class LayerReading:
    """One block's offset.

    Attributes:
        layer: The block.
        norm: ``|v_l|``.
        dose: ``|v_l| / mu_l``.
        cosine_previous: Cosine with the previous block's offset (``None`` when either is zero).
        cosine_vector: Cosine with the vector file's ``c_l`` (``None`` without one).
    """

    layer: int
    norm: float
    dose: float
    cosine_previous: float | None
    cosine_vector: float | None


@dataclass
class AuditReport:
    """What :func:`audit` found.

    Attributes:
        model: The checkpoint audited.
        mu_from: Where ``mu`` came from (the record, or the shipped prompts through which model).
        layers: One reading per block with a non-zero offset.
        num_layers: The model's number of blocks.
    """

    model: str
    mu_from: str
    num_layers: int
    layers: list[LayerReading] = field(default_factory=list)

    @property
    def found(self) -> bool:
        return bool(self.layers)

    @property
    def band(self) -> tuple[int, int] | None:
        """``(first, last + 1)`` of the steered blocks."""
        return (self.layers[0].layer, self.layers[-1].layer + 1) if self.layers else None

    def lines(self) -> list[str]:
        """The report as text: a verdict and, when steering was found, one row per steered block."""
        if not self.layers:
            return [f"no steering found in {self.model} ({self.num_layers} blocks, no MLP output offset)"]
        start, end = self.band or (0, 0)
        doses = [r.dose for r in self.layers]
        head = (
            f"steering found in {self.model}: blocks {start}-{end - 1} ({len(self.layers)} of {self.num_layers}), "
            f"dose |v|/mu {min(doses):.4g} .. {max(doses):.4g} (mu from {self.mu_from})"
        )
        rows = [f"{'layer':>5} {'|v|':>10} {'|v|/mu':>10} {'cos prev':>9} {'cos c_l':>8}"]
        for r in self.layers:
            prev = "-" if r.cosine_previous is None else f"{r.cosine_previous:.3f}"
            vec = "-" if r.cosine_vector is None else f"{r.cosine_vector:.3f}"
            rows.append(f"{r.layer:>5} {r.norm:>10.4g} {r.dose:>10.4g} {prev:>9} {vec:>8}")
        return [head, *rows]


def _biases(model: str) -> tuple[Any, Any, dict[int, torch.Tensor], int]:
    """The source, its spec, ``{block: offset}`` read from its MLP output biases, and its number of blocks."""
    from safetensors import safe_open

    from bakesteer.architectures import spec_for
    from bakesteer.errors import UnsupportedCheckpointError
    from bakesteer.source import load_config, resolve_source

    source = resolve_source(model)
    if source.gguf_file:
        raise UnsupportedCheckpointError(
            source.model_id, reason="audit reads safetensors checkpoints", hint="audit the checkpoint it came from"
        )
    config = load_config(source)
    spec = spec_for(config, allow_remote_code=True)
    layers = int(config.get_text_config().num_hidden_layers)
    wanted = {f"{spec.layers}.{i}.{spec.down_bias}": i for i in range(layers)}
    found: dict[int, torch.Tensor] = {}
    for name in source.weight_files:
        with safe_open(str(source.directory / name), framework="pt") as handle:
            for key in set(handle.keys()) & set(wanted):
                bias = handle.get_tensor(key).to(torch.float32)
                if bias.dim() > 1:  # per-expert biases carry the same offset in every expert
                    bias = bias.mean(dim=0)
                found[wanted[key]] = bias * spec.divisor(config)
    return source, spec, found, layers


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float | None:
    na, nb = float(a.double().norm()), float(b.double().norm())
    if na == 0 or nb == 0:
        return None
    return float(a.double() @ b.double()) / (na * nb)


def _mu(model: str, source: Any, base: str | None) -> tuple[torch.Tensor, str]:
    """``mu`` from the model's bakesteer record, else measured on the shipped prompt sets (through the base when
    given: the steered model's own norms include its steering)."""
    from bakesteer.errors import NotAnOutputError
    from bakesteer.loading import load_for_measurement
    from bakesteer.options import ConvertOptions
    from bakesteer.record import read_output

    try:
        record = read_output(source.directory, vector=False).record
        return torch.tensor(record.method["mu"], dtype=torch.float32), "its bakesteer.json"
    except NotAnOutputError:
        pass
    reader = base or model
    with tempfile.TemporaryDirectory(prefix="bakesteer-audit-") as scratch:
        with load_for_measurement(reader, ConvertOptions(), Path(scratch)) as loaded:
            mu = loaded.vector.mu.clone()
    return mu, f"the shipped prompt sets through {Path(reader).name if Path(reader).exists() else reader}"


def audit(model: str, *, base: str | None = None, vector: Path | None = None) -> AuditReport:
    """Find the steering offsets a checkpoint carries.

    Args:
        model: A directory or Hub id (safetensors).
        base: Its base: the offsets are then the difference of the two checkpoints' MLP output biases.
        vector: A ``steering.safetensors``: each offset's cosine with its direction ``c_l`` is reported.

    Raises:
        BakesteerError: the model, base or vector cannot be read, or its family is not in the registry.
    """
    source, _, offsets, layers = _biases(model)
    if base is not None:
        _, _, base_offsets, _ = _biases(base)
        offsets = {i: v - base_offsets.get(i, torch.zeros_like(v)) for i, v in offsets.items()}
    offsets = {i: v for i, v in sorted(offsets.items()) if bool(v.any())}
    report = AuditReport(source.model_id, "", layers)
    if not offsets:
        return report
    mu, report.mu_from = _mu(model, source, base)
    directions = None
    if vector is not None:
        from bakesteer.vector import SteeringVector

        directions = SteeringVector.load(Path(vector)).directions
    for i, v in offsets.items():
        norm = float(v.double().norm())
        previous = offsets.get(i - 1)
        report.layers.append(
            LayerReading(
                layer=i,
                norm=norm,
                dose=norm / float(mu[i]) if float(mu[i]) > 0 else math.nan,
                cosine_previous=None if previous is None else _cosine(v, previous),
                cosine_vector=None if directions is None else _cosine(v, directions[i]),
            )
        )
    return report
