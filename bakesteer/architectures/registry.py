"""One declarative entry per model family.

An entry says where the decoder blocks are, which bias parameter sits on the MLP's output (that output is added
straight to the residual stream, so a bias there equals adding the offset to the block's output), how the bias is
obtained, and which runtimes load the result. Adding a family means adding an entry here and a tiny fixture in
``tests/fixtures.py``; ``tests/test_architectures.py`` fails for an entry without one.

Families that cannot be baked exactly are listed in :data:`REFUSED` with the reason, so the error says why.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from bakesteer.errors import UnsupportedArchitectureError


class Strategy(str, Enum):
    """How the MLP output gets the bias that carries the offset."""

    #: The bias already exists in every block: add the offset to it.
    EXISTING_BIAS = "existing_bias"
    #: A config flag makes the model class create the biases: switch it on, write zeros to the other new biases.
    NATIVE_FLAG = "native_flag"
    #: Rewrite the config as an identical family whose flag creates the biases (same tensor names and math).
    REMAP = "remap"


Guard = Callable[[Any], "str | None"]

RUNTIMES_ALL = ("transformers", "vllm", "llama.cpp")
RUNTIMES_HF = ("transformers",)


@dataclass(frozen=True)
class Remap:
    """A config-only remap onto an identical family.

    Attributes:
        target: ``model_type`` written to ``config.json``.
        architecture: Its ``*ForCausalLM`` class name.
        config_updates: Attributes set on the target config (the flags that create the biases).
        zero_biases: Bias parameters (inside a block) the target creates that the source lacks; written as zeros.
    """

    target: str
    architecture: str
    config_updates: Mapping[str, Any]
    zero_biases: tuple[str, ...] = ()


@dataclass(frozen=True)
class ArchitectureSpec:
    """How one family carries a baked offset.

    Attributes:
        model_type: ``config.model_type`` this entry handles.
        strategy: How the bias is obtained (for a flag family whose flag is already on, the bias is added to).
        layers: Module path of the decoder blocks in the ``*ForCausalLM`` model; also their checkpoint prefix.
        backbone: Module path of the decoder stack (embeddings, blocks, final norm), run without the LM head while
            calibrating.
        down_bias: Path, inside a block, of the bias on the MLP output (``[d_model]``, or ``[experts, d_model]`` for
            per-expert biases, to each of which the offset is added: exact because router weights sum to 1).
        flag: The config attribute that creates the biases (``NATIVE_FLAG``).
        flag_biases: Every bias parameter (inside a block) the flag creates; all but ``down_bias`` are zeros.
        remap: The target family (``REMAP``).
        offset_divisor: Config attribute scaling the MLP output before the residual add (the bias is ``v / it``).
        runtimes: Runtimes known to load the baked checkpoint with the offset applied.
        guards: Functions of the config returning a reason to refuse it, or ``None``.
        notes: One sentence for the support table.
    """

    model_type: str
    strategy: Strategy
    layers: str = "model.layers"
    backbone: str = "model"
    down_bias: str = "mlp.down_proj.bias"
    flag: str | None = None
    flag_biases: tuple[str, ...] = ()
    remap: Remap | None = None
    offset_divisor: str | None = None
    runtimes: tuple[str, ...] = RUNTIMES_HF
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


# --------------------------------------------------------------------------- guards


def _no_sliding_window(config: Any) -> str | None:
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None) or []
    uses = getattr(config, "use_sliding_window", window is not None)
    limit = getattr(config, "max_position_embeddings", 0)
    if "sliding_attention" in layer_types or (uses and window is not None and window < limit):
        return (
            f"it uses sliding-window attention (window {window}), which the Llama target cannot express "
            "(the remap would be wrong past the window)"
        )
    return None


def _full_rotary(config: Any) -> str | None:
    rope = getattr(config, "rope_parameters", None) or {}
    factor = rope.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", 1.0)) or 1.0
    if float(factor) < 1.0:
        return f"partial_rotary_factor={factor} is ignored by the Llama target (the remap would be silently wrong)"
    return None


def _silu(config: Any) -> str | None:
    act = getattr(config, "hidden_act", "silu")
    if act != "silu":
        return f"hidden_act={act!r}: vLLM and llama.cpp hard-code SiLU for Llama, so the remap would not be portable"
    return None


LLAMA_MLP = ("mlp.gate_proj.bias", "mlp.up_proj.bias", "mlp.down_proj.bias")
LLAMA_REMAP_GUARDS: tuple[Guard, ...] = (_no_sliding_window, _full_rotary, _silu)


def _flag(
    model_type: str, *, biases: tuple[str, ...] = LLAMA_MLP, flag: str = "mlp_bias", **kw: Any
) -> ArchitectureSpec:
    return ArchitectureSpec(model_type, Strategy.NATIVE_FLAG, flag=flag, flag_biases=biases, **kw)


def _existing(model_type: str, down_bias: str, **kw: Any) -> ArchitectureSpec:
    return ArchitectureSpec(model_type, Strategy.EXISTING_BIAS, down_bias=down_bias, runtimes=RUNTIMES_ALL, **kw)


_ENTRIES = (
    _flag(
        "llama",
        runtimes=RUNTIMES_ALL,
        notes="`mlp_bias` creates gate/up/down biases in every layer; gate/up are zeros.",
    ),
    _flag("smollm3", notes="`mlp_bias`, as Llama; sliding windows and NoPE layers are kept."),
    _flag(
        "granite",
        offset_divisor="residual_multiplier",
        notes="`mlp_bias`; the MLP output is scaled by `residual_multiplier`, so the bias is v / residual_multiplier.",
    ),
    _flag("helium", notes="`mlp_bias`, as Llama."),
    _flag("seed_oss", notes="`mlp_bias`, as Llama."),
    _flag("arcee", biases=("mlp.up_proj.bias", "mlp.down_proj.bias"), notes="`mlp_bias` on its up/down MLP."),
    _flag(
        "falcon",
        flag="bias",
        layers="transformer.h",
        backbone="transformer",
        down_bias="mlp.dense_4h_to_h.bias",
        biases=(
            "self_attention.query_key_value.bias",
            "self_attention.dense.bias",
            "mlp.dense_h_to_4h.bias",
            "mlp.dense_4h_to_h.bias",
        ),
        notes="`bias` creates a bias in every linear layer; all but the MLP output's are zeros.",
    ),
    _flag(
        "starcoder2",
        flag="use_bias",
        down_bias="mlp.c_proj.bias",
        biases=(
            "self_attn.q_proj.bias",
            "self_attn.k_proj.bias",
            "self_attn.v_proj.bias",
            "self_attn.o_proj.bias",
            "mlp.c_fc.bias",
            "mlp.c_proj.bias",
        ),
        runtimes=RUNTIMES_ALL,
        notes="Biases exist by default (`use_bias`) and are added to; with `use_bias=false` the flag is switched on.",
    ),
    _existing("gpt2", "mlp.c_proj.bias", layers="transformer.h", backbone="transformer", notes="Conv1D `c_proj` bias."),
    _existing(
        "gpt_neox",
        "mlp.dense_4h_to_h.bias",
        layers="gpt_neox.layers",
        backbone="gpt_neox",
        notes="Parallel or sequential residual; the MLP output bias is added to.",
    ),
    _existing("phi", "mlp.fc2.bias", notes="Phi-1/1.5/2 (parallel block); the `fc2` bias is added to."),
    _existing(
        "gpt_oss",
        "mlp.experts.down_proj_bias",
        notes="The offset is added to every expert's down bias: exact because the top-k router weights sum to 1.",
    ),
    ArchitectureSpec(
        "mistral",
        Strategy.REMAP,
        remap=Remap("llama", "LlamaForCausalLM", {"mlp_bias": True}),
        flag_biases=LLAMA_MLP,
        runtimes=RUNTIMES_ALL,
        guards=LLAMA_REMAP_GUARDS,
        notes="Without a sliding window Mistral is Llama: config-only remap, same tensor names.",
    ),
    ArchitectureSpec(
        "qwen2",
        Strategy.REMAP,
        remap=Remap(
            "llama", "LlamaForCausalLM", {"mlp_bias": True, "attention_bias": True}, ("self_attn.o_proj.bias",)
        ),
        flag_biases=LLAMA_MLP,
        runtimes=RUNTIMES_ALL,
        guards=LLAMA_REMAP_GUARDS,
        notes="Llama with `attention_bias` (q/k/v biases kept, a zero o_proj bias written) and `mlp_bias`.",
    ),
)

REGISTRY: Mapping[str, ArchitectureSpec] = {spec.model_type: spec for spec in _ENTRIES}


@dataclass(frozen=True)
class Refusal:
    """Why a family cannot be baked, and what the user can do instead."""

    reason: str
    way_forward: str


_NO_SITE = "a norm sits between its MLP output and the residual stream, so no bias can carry the offset exactly"
_NO_BIAS_MOE = "its experts have no bias, so no bias can carry the offset"
_HOOKS = "steer it with forward hooks at run time (bakesteer.hooks.steering) instead of baking"
_LATER = "an exact remap is not implemented yet"
_USE_HOOKS_FOR_NOW = "steer it with forward hooks at run time (bakesteer.hooks.steering) until the remap lands"
#: Families refused with a reason and a way forward, given in the error.
REFUSED: Mapping[str, Refusal] = {
    "gemma2": Refusal(f"{_NO_SITE} (post_feedforward_layernorm)", _HOOKS),
    "gemma3": Refusal(f"{_NO_SITE} (post_feedforward_layernorm)", _HOOKS),
    "gemma3_text": Refusal(f"{_NO_SITE} (post_feedforward_layernorm)", _HOOKS),
    "olmo2": Refusal(f"{_NO_SITE} (post-norm blocks)", _HOOKS),
    "mixtral": Refusal(_NO_BIAS_MOE, _HOOKS),
    "qwen2_moe": Refusal(_NO_BIAS_MOE, _HOOKS),
    "gemma": Refusal(f"{_LATER} (norm weights 1+w, scaled embeddings)", _USE_HOOKS_FOR_NOW),
    "phi3": Refusal(f"{_LATER} (fused qkv_proj and gate_up_proj)", _USE_HOOKS_FOR_NOW),
    "qwen3": Refusal(f"{_LATER} (no MLP bias; its o_proj bias sits half a layer earlier)", _USE_HOOKS_FOR_NOW),
    "qwen3_moe": Refusal(_NO_BIAS_MOE, _HOOKS),
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
        refusal = REFUSED.get(model_type)
        if refusal is None:
            raise UnsupportedArchitectureError(model_type, supported_model_types())
        raise UnsupportedArchitectureError(
            model_type, supported_model_types(), reason=refusal.reason, hint=refusal.way_forward
        )
    reason = spec.refusal(config)
    if reason:
        raise UnsupportedArchitectureError(model_type, supported_model_types(), reason=reason)
    return spec
