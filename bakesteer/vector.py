"""The steering vector: per-layer ``mu`` and unit directions, saved as ``steering.safetensors``."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from bakesteer.errors import DirectionError, VectorFileError

FORMAT = "bakesteer.vector/1"


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """``safetensors.torch.save_file`` with a reproducible header.

    The safetensors writer keeps ``__metadata__`` in a hash map, so its keys come out in a different order in each
    process; the header is rewritten with sorted keys (same length, so every data offset stays valid).
    """
    data = save(tensors, metadata=metadata)
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    canonical = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    if len(canonical) > size:  # cannot happen for a compact header; keep the library's bytes if it ever does
        Path(path).write_bytes(data)
        return
    Path(path).write_bytes(data[:8] + canonical.ljust(size, b" ") + data[8 + size :])


@dataclass(frozen=True)
class SteeringVector:
    """Calibration result for one model, independent of ``k`` and the band.

    Attributes:
        mu: ``[L]`` float32 mean residual norm per layer.
        directions: ``[L, d_model]`` float32 unit difference-of-means directions.
        model_type: ``config.model_type`` it was computed on.
        info: JSON-ready calibration record (prompt-set hashes, token counts, options that shaped it).
    """

    mu: torch.Tensor
    directions: torch.Tensor
    model_type: str
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_layers(self) -> int:
        return int(self.mu.shape[0])

    @property
    def d_model(self) -> int:
        return int(self.directions.shape[1])

    def offsets(self, band: tuple[int, int], alpha: float) -> torch.Tensor:
        """``v_l = alpha * mu_l / sqrt(d_model) * c_l`` for ``l`` in ``band``, zero elsewhere; float32 ``[L, d]``.

        Raises:
            DirectionError: a direction or norm in the band is zero or not finite.
        """
        start, end = band
        out = torch.zeros_like(self.directions, dtype=torch.float32)
        for layer in range(start, end):
            direction = self.directions[layer].to(torch.float64)
            norm = float(torch.linalg.vector_norm(direction))
            mu = float(self.mu[layer])
            if not (math.isfinite(norm) and abs(norm - 1.0) < 1e-3 and math.isfinite(mu) and mu > 0):
                raise DirectionError(layer, norm if math.isfinite(norm) else float("nan"))
            scale = alpha * mu / math.sqrt(self.d_model)
            out[layer] = (scale * direction).to(torch.float32)
        return out

    def save(self, path: Path, *, band: tuple[int, int] | None = None, alpha: float | None = None) -> None:
        """Write ``mu``, ``directions`` (every layer) and, when given, the band, ``k`` and the offsets written."""
        tensors = {"mu": self.mu.contiguous(), "directions": self.directions.contiguous()}
        meta = {
            "format": FORMAT,
            "model_type": self.model_type,
            "num_layers": str(self.num_layers),
            "d_model": str(self.d_model),
            "calibration": json.dumps(self.info, sort_keys=True),
        }
        if band is not None and alpha is not None:
            tensors["offsets"] = self.offsets(band, alpha).contiguous()
            meta.update(band_start=str(band[0]), band_end=str(band[1]), alpha=repr(float(alpha)))
        write_safetensors(path, tensors, meta)

    @classmethod
    def load(cls, path: Path) -> SteeringVector:
        """Read a ``steering.safetensors`` file.

        Raises:
            VectorFileError: missing, not safetensors, or not a bakesteer vector.
        """
        path = Path(path)
        hint = "pass a steering.safetensors written by `bakesteer vector` or `bakesteer convert`"
        if not path.is_file():
            raise VectorFileError(path.name, reason="file not found", hint=hint)
        try:
            with safe_open(str(path), framework="pt") as handle:
                meta = handle.metadata() or {}
                if meta.get("format") != FORMAT or not {"mu", "directions"} <= set(handle.keys()):
                    raise VectorFileError(path.name, reason="not a bakesteer vector", hint=hint)
                mu, directions = handle.get_tensor("mu"), handle.get_tensor("directions")
        except (SafetensorError, OSError) as err:
            raise VectorFileError(path.name, reason=f"not a safetensors file ({err})", hint=hint) from None
        return cls(
            mu=mu.to(torch.float32),
            directions=directions.to(torch.float32),
            model_type=meta.get("model_type", ""),
            info=json.loads(meta.get("calibration", "{}")),
        )

    def check_fits(self, model_type: str, num_layers: int, d_model: int, path: str) -> None:
        """Refuse a vector computed for a model of another shape or family."""
        if (self.num_layers, self.d_model) != (num_layers, d_model) or self.model_type != model_type:
            raise VectorFileError(
                path,
                reason=f"made for a {self.model_type} with {self.num_layers} layers x {self.d_model}, this model is "
                f"a {model_type} with {num_layers} layers x {d_model}",
                hint="compute a vector for this model (drop --vector)",
            )
