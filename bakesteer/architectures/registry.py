"""One declarative entry per model family.

An entry says where the decoder blocks are, which linear is the MLP down projection (its output is added straight
to the residual stream, so a bias on it equals adding the offset to the block's output), how a bias is obtained,
and which runtimes load the result. Adding a family means adding an entry here and a tiny fixture in
``tests/fixtures.py``; ``tests/test_architectures.py`` fails for an entry without one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from bakesteer.errors import UnsupportedArchitectureError


class Strategy(str, Enum):
    """How the down projection gets the bias that carries the offset."""

    #: The down projection already has a bias in every layer: add the offset to it.
    EXISTING_BIAS = "existing_bias"
    #: A config flag makes the model class create the biases: switch it on, write zeros to the other new biases.
    NATIVE_FLAG = "native_flag"


Guard = Callable[[Any], "str | None"]


@dataclass(frozen=True)
class ArchitectureSpec:
    """How one family carries a baked offset.

    Attributes:
        model_type: ``config.model_type`` this entry handles.
        strategy: How the bias is obtained.
        layers: Module path of the decoder blocks in the ``*ForCausalLM`` model; it is also their checkpoint prefix.
        backbone: Module path of the decoder stack (embeddings + blocks + final norm), run without the LM head
            during calibration.
        down_proj: Path of the down projection inside a block.
        flag: For ``NATIVE_FLAG``, the config attribute that creates the biases.
        flag_biases: For ``NATIVE_FLAG``, every linear (inside a block) that the flag gives a bias; all but
            ``down_proj`` get zeros.
        offset_divisor: Config attribute the block output is scaled by after the MLP (the bias is ``v / that``).
        runtimes: Runtimes known to load the baked checkpoint with the offset applied.
        guards: Functions of the config returning a reason to refuse it, or ``None``.
        notes: One sentence for the support table.
    """

    model_type: str
    strategy: Strategy
    layers: str = "model.layers"
    backbone: str = "model"
    down_proj: str = "mlp.down_proj"
    flag: str | None = None
    flag_biases: tuple[str, ...] = ()
    offset_divisor: str | None = None
    runtimes: tuple[str, ...] = ("transformers",)
    guards: tuple[Guard, ...] = field(default=(), compare=False)
    notes: str = ""

    def refusal(self, config: Any) -> str | None:
        """The first guard's reason to refuse ``config``, or ``None`` when it can be baked exactly."""
        for guard in self.guards:
            reason = guard(config)
            if reason:
                return reason
        return None

    def divisor(self, config: Any) -> float:
        """What the offset is divided by before it is written (1 for most families)."""
        return float(getattr(config, self.offset_divisor)) if self.offset_divisor else 1.0


LLAMA_MLP = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")

REGISTRY: Mapping[str, ArchitectureSpec] = {
    spec.model_type: spec
    for spec in (
        ArchitectureSpec(
            model_type="llama",
            strategy=Strategy.NATIVE_FLAG,
            flag="mlp_bias",
            flag_biases=LLAMA_MLP,
            runtimes=("transformers", "vllm", "llama.cpp"),
            notes="`mlp_bias` creates gate/up/down biases in every layer; gate/up are written as zeros.",
        ),
    )
}


def supported_model_types() -> list[str]:
    """Every ``model_type`` in the registry, sorted."""
    return sorted(REGISTRY)


def spec_for(config: Any) -> ArchitectureSpec:
    """The registry entry for a parsed transformers config.

    Args:
        config: A ``PretrainedConfig`` (from ``AutoConfig``; never the raw JSON, which some configs rewrite).

    Raises:
        UnsupportedArchitectureError: no entry for ``config.model_type``, or the entry's guards refuse it.
    """
    model_type = str(getattr(config, "model_type", "") or "unknown")
    spec = REGISTRY.get(model_type)
    if spec is None:
        raise UnsupportedArchitectureError(model_type, supported_model_types())
    reason = spec.refusal(config)
    if reason:
        raise UnsupportedArchitectureError(model_type, supported_model_types(), reason=reason)
    return spec
