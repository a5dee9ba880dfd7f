"""From offsets to biases: the tensor plan a registry entry implies, and its application to tensors.

The plan is in checkpoint key space and in float32. Writing rounds once: a new bias is ``plan`` cast to the model
dtype; an existing bias is ``(existing in float32 + plan)`` cast once (a double-rounded add changes elements).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bakesteer.architectures import ArchitectureSpec, Strategy


@dataclass(frozen=True)
class BiasPlan:
    """Tensors to write.

    Attributes:
        new: Keys absent from the source checkpoint and their float32 values (zeros for the flag's other biases).
        add: Keys present in the source and the float32 amount to add to them.
        config_updates: Config attributes to set (e.g. ``{"mlp_bias": True}``).
    """

    new: dict[str, torch.Tensor]
    add: dict[str, torch.Tensor]
    config_updates: dict[str, object]

    def keys(self) -> set[str]:
        return set(self.new) | set(self.add)


def bias_plan(model: nn.Module, spec: ArchitectureSpec, offsets: torch.Tensor) -> BiasPlan:
    """The biases that make ``model`` (in the source's layout) add ``offsets[l]`` after block ``l``.

    When the down projections already carry a bias (``EXISTING_BIAS``, or a ``NATIVE_FLAG`` family whose flag is
    already on), the offset is added to it; otherwise the flag is switched on and every bias it creates is written,
    zeros outside the down projections and outside the band (a missing bias would be zero-initialised with a
    warning; writing it keeps the reload silent and exact).

    Args:
        model: The source model (only module shapes and bias presence are read).
        spec: Its registry entry.
        offsets: ``[L, d_model]`` float32, zero rows outside the band.
    """
    layers: Any = model.get_submodule(spec.layers)
    divisor = spec.divisor(model.config)
    down_values = offsets.to(torch.float32) / divisor
    new: dict[str, torch.Tensor] = {}
    add: dict[str, torch.Tensor] = {}
    updates: dict[str, object] = {}
    for index, layer in enumerate(layers):
        prefix = f"{spec.layers}.{index}"
        down = layer.get_submodule(spec.down_proj)
        if down.bias is not None:
            if down_values[index].any():
                add[f"{prefix}.{spec.down_proj}.bias"] = down_values[index].clone()
            continue
        if spec.strategy is not Strategy.NATIVE_FLAG or not spec.flag:
            raise ValueError(f"{spec.model_type}: {prefix}.{spec.down_proj} has no bias and no flag creates one")
        updates[spec.flag] = True
        for name in spec.flag_biases:
            linear = layer.get_submodule(name)
            key = f"{prefix}.{name}.bias"
            if name == spec.down_proj:
                new[key] = down_values[index].clone()
            else:
                new[key] = torch.zeros(linear.weight.shape[0], dtype=torch.float32)
    return BiasPlan(new=new, add=add, config_updates=updates)


def apply_to_tensor(existing: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``existing + delta`` computed in float32 and rounded once to ``existing``'s dtype."""
    return (existing.to(torch.float32) + delta.to(torch.float32)).to(existing.dtype)
