"""bakesteer: bake norm-calibrated activation steering into ordinary Hugging Face checkpoints."""

from __future__ import annotations

from bakesteer.errors import BakesteerError
from bakesteer.options import ConvertOptions
from bakesteer.version import __version__

__all__ = [
    "BakesteerError",
    "ConvertOptions",
    "ConvertResult",
    "SteeringVector",
    "__version__",
    "compute_vector",
    "convert",
]


def __getattr__(name: str) -> object:
    # torch and transformers load only when the pipeline is used, so `bakesteer --help` stays instant.
    if name in ("convert", "compute_vector", "ConvertResult"):
        from bakesteer import pipeline

        return getattr(pipeline, name)
    if name == "SteeringVector":
        from bakesteer.vector import SteeringVector

        return SteeringVector
    raise AttributeError(f"module 'bakesteer' has no attribute {name!r}")
