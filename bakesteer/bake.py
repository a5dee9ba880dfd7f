"""From offsets to biases: the tensor plan a registry entry implies, the output config, and tensor arithmetic.

The plan is in checkpoint key space and in float32. Writing rounds once: a new bias is ``plan`` cast to the model
dtype; an existing bias is ``(existing in float32 + plan)`` cast once (a double-rounded add changes elements).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
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
        config_updates: Config attributes to set (e.g. ``{"mlp_bias": True}``); for a remap, also ``model_type``.
        strategy: What was done: ``existing_bias`` when only existing biases change, else the entry's strategy.
    """

    new: dict[str, torch.Tensor]
    add: dict[str, torch.Tensor]
    config_updates: dict[str, Any]
    strategy: str
    rewrite: Callable[[str], list[tuple[str, Callable[[torch.Tensor], torch.Tensor] | None]] | None] | None = None

    def keys(self) -> set[str]:
        return set(self.new) | set(self.add)

    def outputs_for(self, key: str) -> list[tuple[str, Callable[[torch.Tensor], torch.Tensor] | None]]:
        """The output keys a source key becomes, with the transform for each (``None``: unchanged)."""
        outputs = self.rewrite(key) if self.rewrite else None
        return outputs if outputs is not None else [(key, None)]

    def touches(self, key: str) -> bool:
        """Whether the source tensor ``key`` must be decoded (added to or transformed)."""
        return key in self.add or self.outputs_for(key) != [(key, None)]


def _out_features(layer: nn.Module, bias_path: str) -> int:
    owner = layer.get_submodule(bias_path.rsplit(".", 1)[0])
    weight: Any = owner.weight
    # nn.Linear stores [out, in]; GPT-2's Conv1D stores [in, out] and has nf = out.
    return int(getattr(owner, "nf", weight.shape[0]))


def bias_plan(
    model: nn.Module, spec: ArchitectureSpec, offsets: torch.Tensor, dtype: torch.dtype = torch.float32
) -> BiasPlan:
    """The biases that make ``model`` (in the source's layout) add ``offsets[l]`` after block ``l``.

    Where the MLP output already carries a bias, the offset is added to it (broadcast over experts for per-expert
    biases). Otherwise the flag (or the remap's target flags) is switched on and every bias it creates is written:
    zeros except on the MLP output, and zeros outside the band (a missing bias would be zero-initialised with a
    warning; writing it keeps the reload silent and exact).

    Args:
        model: The source model (only module shapes and bias presence are read).
        spec: Its registry entry.
        offsets: ``[L, d_model]`` float32, zero rows outside the band.
    """
    layers: Any = model.get_submodule(spec.layers)
    down_values = offsets.to(torch.float32) / spec.divisor(model.config)
    new: dict[str, torch.Tensor] = {}
    add: dict[str, torch.Tensor] = {}
    updates: dict[str, Any] = {}
    if spec.remote is not None:
        # the generated modeling file gives every block a `steering_vector` buffer, added to its output
        new = {f"{spec.layers}.{i}.{spec.down_bias}": down_values[i].clone() for i in range(len(layers))}
        return BiasPlan(
            new=new, add={}, config_updates={"model_type": f"steered_{spec.model_type}"}, strategy=spec.strategy.value
        )
    for index, layer in enumerate(layers):
        prefix = f"{spec.layers}.{index}"
        params = dict(layer.named_parameters())
        existing = params.get(spec.down_bias)
        if existing is not None:
            if down_values[index].any():
                add[f"{prefix}.{spec.down_bias}"] = down_values[index].expand_as(existing).clone()
            continue
        if spec.strategy is Strategy.EXISTING_BIAS:
            raise ValueError(f"{spec.model_type}: {prefix}.{spec.down_bias} does not exist")
        extra: tuple[str, ...] = ()
        if spec.remap is not None:
            updates.update(spec.remap.config_updates, model_type=spec.remap.target)
            extra = spec.remap.zero_biases
        elif spec.flag:
            updates[spec.flag] = True
        for name in (*spec.flag_biases, *extra):
            if name in params:
                continue
            key = f"{prefix}.{name}"
            if name == spec.down_bias:
                new[key] = down_values[index].clone()
            else:
                size = (
                    int(getattr(model.config, spec.remap.bias_sizes[name]))
                    if spec.remap is not None
                    else _out_features(layer, name)
                )
                new[key] = torch.zeros(size, dtype=torch.float32)
    strategy = Strategy.EXISTING_BIAS.value if not new else spec.strategy.value
    rewrite = None
    if spec.remap is not None and spec.remap.rewrite is not None and "model_type" in updates:
        transform, config = spec.remap.rewrite, model.config

        def rewrite(key: str) -> list[tuple[str, Callable[[torch.Tensor], torch.Tensor] | None]] | None:
            return transform(key, config, dtype)

    return BiasPlan(new=new, add=add, config_updates=updates, strategy=strategy, rewrite=rewrite)


def _target_config(config: Any, spec: ArchitectureSpec, plan: BiasPlan, dtype: torch.dtype) -> Any:
    """A remap's output config: the target family's config built from the source's fields (only fields the target
    knows are kept), with the plan's flags on."""
    from transformers import CONFIG_MAPPING

    assert spec.remap is not None
    target = CONFIG_MAPPING[spec.remap.target]
    known = set(target().to_dict())
    source = config.to_dict()
    kwargs = {k: v for k, v in source.items() if k in known and k not in ("model_type", "architectures")}
    if spec.remap.config_fn is not None:
        kwargs.update(spec.remap.config_fn(config))
    out = target(**kwargs)
    out.architectures = [spec.remap.architecture]
    for key, value in plan.config_updates.items():
        if key != "model_type":
            setattr(out, key, value)
    out.dtype = dtype
    return out


def output_config_text(
    source_config: Path, config: Any, spec: ArchitectureSpec, plan: BiasPlan, dtype: torch.dtype
) -> str:
    """The output's ``config.json``.

    Outside a remap it is the source's own file with only the keys the bake needs changed (the plan's flags, the
    dtype, ``architectures`` where a config has none), in the source's layout; keys transformers 4 would read
    differently from transformers 5 are added only where they are absent (see :mod:`bakesteer.configfiles`). A remap
    builds the target family's config and writes it in both layouts, so transformers 4 and 5 read it alike.

    Args:
        source_config: The source's ``config.json``.
        config: The parsed source config (a remap reads its fields).
    """
    from bakesteer.configfiles import dtype_updates, dump_like, portable_updates

    name = str(dtype).removeprefix("torch.")
    if spec.remap is not None and "model_type" in plan.config_updates:
        text = _target_config(config, spec, plan, dtype).to_json_string(use_diff=True)
        raw = json.loads(text)
        return dump_like({**raw, **portable_updates(raw, always=True)}, text)
    text = source_config.read_text(encoding="utf-8")
    raw = json.loads(text)
    updates: dict[str, Any] = {}
    if spec.remote is None:  # remote code: config.json is pointed at the modeling file later
        updates.update(plan.config_updates)
        if not raw.get("architectures"):
            # llama.cpp's and vLLM's loaders pick the model class by it
            from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

            class_name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(str(raw.get("model_type")))
            if class_name is not None:
                updates["architectures"] = [class_name]
    updates.update(dtype_updates(raw, name))
    updates.update(portable_updates({**raw, **updates}, always=False))
    return dump_like({**raw, **updates}, text)


MODELING_FILE = "modeling_steered.py"


def write_remote_code(directory: Path, spec: ArchitectureSpec, version: str) -> dict[str, Any]:
    """Write the generated modeling file for a ``REMOTE_CODE`` family and point ``config.json`` at it.

    Returns:
        The config.json entries that were changed.
    """
    from importlib import resources

    from bakesteer.configfiles import edit_json

    assert spec.remote is not None
    template = resources.files("bakesteer.templates").joinpath("modeling_steered.py.tmpl").read_text()
    (directory / MODELING_FILE).write_text(
        template.format(
            base_type=spec.model_type,
            version=version,
            reason=spec.remote.reason,
            layers=spec.layers,
            config_class=spec.remote.config_class,
            model_class=spec.remote.model_class,
        )
    )
    module = MODELING_FILE.removesuffix(".py")
    updates = {
        "model_type": f"steered_{spec.model_type}",
        "architectures": ["SteeredForCausalLM"],
        "auto_map": {
            "AutoConfig": f"{module}.SteeredConfig",
            **dict.fromkeys(spec.remote.auto_classes, f"{module}.SteeredForCausalLM"),
        },
    }
    edit_json(directory / "config.json", updates)
    return updates
