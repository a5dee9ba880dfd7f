"""The architecture registry: how each model family carries a baked offset.

Everything family-specific lives in :mod:`bakesteer.architectures.registry` as data; the rest of bakesteer reads
:class:`ArchitectureSpec` fields and never branches on ``model_type``.
"""

from bakesteer.architectures.registry import REGISTRY, ArchitectureSpec, Strategy, spec_for, supported_model_types

__all__ = ["REGISTRY", "ArchitectureSpec", "Strategy", "spec_for", "supported_model_types"]
