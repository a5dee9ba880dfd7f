"""Forward hooks on decoder blocks, only ever inside context managers.

A hook left behind silently changes every later forward pass, so hooks are registered in a ``with`` block whose
``finally`` removes them, even when the body raises. :func:`steering` is the reference the baked checkpoint must
reproduce.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
from torch import nn

from bakesteer.architectures import ArchitectureSpec

#: Called with (layer index, block output); returns a replacement output or None to leave it alone.
LayerFn = Callable[[int, torch.Tensor], "torch.Tensor | None"]


def decoder_layers(model: nn.Module, spec: ArchitectureSpec) -> nn.ModuleList:
    """The decoder blocks of ``model`` where ``spec`` says they are."""
    layers = model.get_submodule(spec.layers)
    if not isinstance(layers, nn.ModuleList):
        raise TypeError(f"{spec.layers} is a {type(layers).__name__}, not a ModuleList")
    return layers


def _call(index: int, fn: LayerFn, module: nn.Module, args: Any, output: Any) -> Any:
    # Blocks return a tensor in transformers 5 and a tuple (hidden, ...) in older versions and some families.
    hidden = output[0] if isinstance(output, tuple) else output
    new = fn(index, hidden)
    if new is None:
        return None
    return (new, *output[1:]) if isinstance(output, tuple) else new


@contextmanager
def layer_hooks(model: nn.Module, spec: ArchitectureSpec, fn: LayerFn) -> Iterator[None]:
    """Run ``fn`` on the output of every decoder block while the ``with`` body runs.

    The output of block ``l`` is the residual stream after layer ``l`` (0-based), before the final norm.
    """
    handles = []
    try:
        for index, layer in enumerate(decoder_layers(model, spec)):
            handles.append(layer.register_forward_hook(partial(_call, index, fn)))
        yield
    finally:
        for handle in handles:
            handle.remove()


#: How :func:`steering` applies the offsets. ``broadcast`` adds them at every position (what a baked bias does);
#: ``last-token`` adds them only at the last position of each forward call: the last prompt token during prefill and
#: each generated token during cached decoding (the earlier prompt positions stay unsteered, which a bias cannot do).
STEERING_MODES = ("broadcast", "last-token")


@contextmanager
def steering(
    model: nn.Module, spec: ArchitectureSpec, offsets: torch.Tensor, *, mode: str = "broadcast"
) -> Iterator[None]:
    """Add ``offsets[l]`` to the output of block ``l``, for each layer with a non-zero row.

    Args:
        model: A ``*ForCausalLM`` model.
        spec: Its registry entry.
        offsets: ``[num_layers, d_model]`` float tensor (zero rows outside the band).
        mode: ``broadcast`` (every token) or ``last-token`` (the last position of every forward call; with left
            padding and a KV cache that is the last prompt token, then each generated token).
    """
    if mode not in STEERING_MODES:
        raise ValueError(f"unknown steering mode {mode!r} (one of {', '.join(STEERING_MODES)})")
    active = {int(i) for i in torch.nonzero(offsets.abs().sum(dim=1)).flatten()}
    cache: dict[tuple[int, torch.dtype, torch.device], torch.Tensor] = {}

    def offset(index: int, hidden: torch.Tensor) -> torch.Tensor:
        key = (index, hidden.dtype, hidden.device)
        if key not in cache:
            cache[key] = offsets[index].to(device=hidden.device, dtype=hidden.dtype)
        return cache[key]

    def add(index: int, hidden: torch.Tensor) -> torch.Tensor | None:
        if index not in active:
            return None
        return hidden + offset(index, hidden)

    def add_last(index: int, hidden: torch.Tensor) -> torch.Tensor | None:
        if index not in active:
            return None
        out = hidden.clone()
        out[:, -1, :] += offset(index, hidden)
        return out

    with layer_hooks(model, spec, add if mode == "broadcast" else add_last):
        yield
