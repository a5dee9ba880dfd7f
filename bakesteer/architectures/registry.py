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
from enum import StrEnum
from typing import Any

from bakesteer.errors import UnsupportedArchitectureError


class Strategy(StrEnum):
    """How the MLP output gets the bias that carries the offset."""

    #: The bias already exists in every block: add the offset to it.
    EXISTING_BIAS = "existing_bias"
    #: A config flag makes the model class create the biases: switch it on, write zeros to the other new biases.
    NATIVE_FLAG = "native_flag"
    #: Rewrite the config as an identical family whose flag creates the biases (same tensor names and math).
    REMAP = "remap"
    #: No bias site exists: a new model_type with a small modeling file (opt-in, ``--allow-remote-code``).
    REMOTE_CODE = "remote_code"


Guard = Callable[[Any], "str | None"]

RUNTIMES_ALL = ("transformers", "vllm", "llama.cpp")
RUNTIMES_HF = ("transformers",)
#: Families whose MLP output bias every runtime's base architecture already has; their vLLM code was not read.
RUNTIMES_BIASED = ("transformers", "llama.cpp")

# --------------------------------------------------------------------------- how the runtime claims were checked

#: llama.cpp as llama-cpp-python 0.3.36 vendors it (and `make llama-cpp` fetches it).
LLAMA_CPP_COMMIT = "0c1e57098bba43ac29e6e3b677cdceebdd22334f"
#: vLLM as read for the Llama layout (``vllm/model_executor/models/llama.py``: the MLP's gate/up and down projections
#: take ``bias=config.mlp_bias``; q/k/v and o_proj take ``attention_bias``).
VLLM_COMMIT = "0035bdf2b1ac243ef6f31eef27411b022461df8e"
VLLM_FILES: Mapping[str, str] = {"llama": "vllm/model_executor/models/llama.py"}
#: The llama.cpp model graph (``src/models/<graph>.cpp``) that runs each family's *base* checkpoint. Every one listed
#: calls ``build_cvec(cur, il)`` after the block's second residual add, so a control vector's ``direction.N`` lands on
#: the output of block N (tested against the source in ``tests/test_export.py``); where a family's llama.cpp runtime
#: claim is about the baked checkpoint, the graph of its output family (a remap's target) loads ``ffn_down`` biases.
LLAMA_CPP_GRAPHS: Mapping[str, str] = {
    "arcee": "arcee",
    "falcon": "falcon",
    "gemma": "gemma",
    "gemma2": "gemma2",
    "gemma3": "gemma3",
    "gemma3_text": "gemma3",
    "gpt2": "gpt2",
    "gpt_neox": "gptneox",
    "gpt_oss": "openai-moe",
    "granite": "granite",
    "llama": "llama",
    "mistral": "llama",
    "mixtral": "llama",
    "olmo2": "olmo2",
    "phi": "phi2",
    "phi3": "phi3",
    "qwen2": "qwen2",
    "qwen2_moe": "qwen2moe",
    "qwen3": "qwen3",
    "qwen3_moe": "qwen3moe",
    "smollm3": "smollm3",
    "starcoder2": "starcoder2",
}
#: Claims run end to end in the slow tier (``tests/test_llamacpp.py``, SmolLM2): the rest were read.
LLAMA_CPP_RUN = frozenset({"llama"})


#: A tensor transform, applied in float32 before the one rounding to the output dtype.
TensorFn = Callable[[Any], Any]
#: For a source key: the output keys it becomes and how (``None``: unchanged), or ``None`` to keep it as is.
Rewrite = Callable[[str, Any, Any], "list[tuple[str, TensorFn | None]] | None"]


@dataclass(frozen=True)
class Remap:
    """A remap onto a family with identical math whose flag creates the biases.

    Attributes:
        target: ``model_type`` written to ``config.json``.
        architecture: Its ``*ForCausalLM`` class name.
        config_updates: Attributes set on the target config (the flags that create the biases).
        zero_biases: Bias parameters (inside a block) the target creates that the source lacks; written as zeros.
        bias_sizes: For each new bias, the config attribute giving its length (the source may not have the
            module, e.g. Phi-3's fused ``gate_up_proj``).
        config_fn: More target-config attributes computed from the source config.
        rewrite: Named tensor transforms ``(key, config, dtype) -> outputs`` (splits, renames, rescales).
    """

    target: str
    architecture: str
    config_updates: Mapping[str, Any]
    zero_biases: tuple[str, ...] = ()
    config_fn: Callable[[Any], dict[str, Any]] | None = None
    rewrite: Rewrite | None = None
    bias_sizes: Mapping[str, str] = field(
        default_factory=lambda: {
            "mlp.gate_proj.bias": "intermediate_size",
            "mlp.up_proj.bias": "intermediate_size",
            "mlp.down_proj.bias": "hidden_size",
            "self_attn.o_proj.bias": "hidden_size",
        }
    )


@dataclass(frozen=True)
class RemoteCode:
    """A checkpoint that steers itself through a generated modeling file.

    Attributes:
        config_class: The base family's config class (subclassed with model_type ``steered_<type>``).
        model_class: The base family's ``*ForCausalLM`` class (subclassed to carry and add the vectors).
        reason: Why no exact bias exists (written into the modeling file and the error).
        auto_classes: The auto classes ``auto_map`` registers the model under.
    """

    config_class: str
    model_class: str
    reason: str
    auto_classes: tuple[str, ...] = ("AutoModelForCausalLM",)


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
        remote: The generated-code fallback (``REMOTE_CODE``; only with ``allow_remote_code``).
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
    remote: RemoteCode | None = None
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


# --------------------------------------------------------------------------- named tensor transforms


def _rows(start: int, stop: int) -> TensorFn:
    return lambda t: t[start:stop]


def phi3_rewrite(key: str, config: Any, dtype: Any) -> list[tuple[str, TensorFn | None]] | None:
    """Split Phi-3's fused projections into Llama's: ``qkv_proj`` rows are q, k, v in that order; ``gate_up_proj``
    rows are gate (first half) then up, as ``Phi3MLP`` chunks them."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    q = config.num_attention_heads * head_dim
    kv = config.num_key_value_heads * head_dim
    if key.endswith("self_attn.qkv_proj.weight"):
        prefix = key.removesuffix("qkv_proj.weight")
        return [
            (prefix + "q_proj.weight", _rows(0, q)),
            (prefix + "k_proj.weight", _rows(q, q + kv)),
            (prefix + "v_proj.weight", _rows(q + kv, q + 2 * kv)),
        ]
    if key.endswith("mlp.gate_up_proj.weight"):
        prefix, half = key.removesuffix("gate_up_proj.weight"), config.intermediate_size
        return [(prefix + "gate_proj.weight", _rows(0, half)), (prefix + "up_proj.weight", _rows(half, 2 * half))]
    return None


def gemma_rewrite(key: str, config: Any, dtype: Any) -> list[tuple[str, TensorFn | None]] | None:
    """Gemma as Llama: RMSNorm weights ``w`` become ``1 + w``; the embedding is pre-multiplied by ``sqrt(hidden)``
    rounded to the model dtype (as Gemma rounds its ``embed_scale``) and the LM head keeps the unscaled copy, so
    the tie is broken on purpose."""
    import torch

    if key.endswith("layernorm.weight") or key == "model.norm.weight":
        return [(key, lambda t: t + 1.0)]
    if key == "model.embed_tokens.weight":
        scale = float(torch.tensor(config.hidden_size**0.5).to(dtype))
        return [(key, lambda t: t * scale), ("lm_head.weight", None)]
    return None


def _gemma_config(config: Any) -> dict[str, Any]:
    return {"tie_word_embeddings": False}


def _no_tied_lm_head(config: Any) -> str | None:
    if not getattr(config, "tie_word_embeddings", True):
        return "its LM head is untied, so the embedding cannot be pre-scaled without changing the head"
    return None


LLAMA_MLP = ("mlp.gate_proj.bias", "mlp.up_proj.bias", "mlp.down_proj.bias")
LLAMA_REMAP_GUARDS: tuple[Guard, ...] = (_no_sliding_window, _full_rotary, _silu)


def _flag(
    model_type: str, *, biases: tuple[str, ...] = LLAMA_MLP, flag: str = "mlp_bias", **kw: Any
) -> ArchitectureSpec:
    return ArchitectureSpec(model_type, Strategy.NATIVE_FLAG, flag=flag, flag_biases=biases, **kw)


def _existing(model_type: str, down_bias: str, **kw: Any) -> ArchitectureSpec:
    return ArchitectureSpec(model_type, Strategy.EXISTING_BIAS, down_bias=down_bias, runtimes=RUNTIMES_BIASED, **kw)


_ENTRIES: tuple[ArchitectureSpec, ...] = (
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
        runtimes=RUNTIMES_BIASED,
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
        "phi3",
        Strategy.REMAP,
        remap=Remap("llama", "LlamaForCausalLM", {"mlp_bias": True}, rewrite=phi3_rewrite),
        flag_biases=LLAMA_MLP,
        runtimes=RUNTIMES_ALL,
        guards=LLAMA_REMAP_GUARDS,
        notes="Phi-3/3.5/4 as Llama: fused `qkv_proj` and `gate_up_proj` split; longrope kept.",
    ),
    ArchitectureSpec(
        "gemma",
        Strategy.REMAP,
        remap=Remap("llama", "LlamaForCausalLM", {"mlp_bias": True}, config_fn=_gemma_config, rewrite=gemma_rewrite),
        flag_biases=LLAMA_MLP,
        runtimes=RUNTIMES_HF,
        guards=(_no_sliding_window, _full_rotary, _no_tied_lm_head),
        notes="Gemma 1 as Llama: norms 1+w, embedding pre-scaled, LM head untied (+V x H parameters). Exact in "
        "float32; bf16 within the floor. transformers only: vLLM and llama.cpp hard-code SiLU for Llama.",
    ),
    ArchitectureSpec(
        "qwen3",
        Strategy.REMAP,
        remap=Remap(
            "hy_v3",
            "HYV3ForCausalLM",
            {"mlp_bias": True},
            config_fn=lambda c: {
                "mlp_layer_types": ["dense"] * c.num_hidden_layers,
                "num_experts": 1,
                "num_shared_experts": 0,
                "num_experts_per_tok": 1,
            },
        ),
        flag_biases=LLAMA_MLP,
        runtimes=RUNTIMES_HF,
        guards=(_no_sliding_window,),
        notes="Qwen3 as HY-V3 with every layer dense: the same attention (q/k norms) and MLP, plus `mlp_bias`, at "
        "the exact layer-output site. Needs transformers >= 5; vLLM and llama.cpp do not know HY-V3.",
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

_NO_SITE = "a norm sits between its MLP output and the residual stream, so no bias can carry the offset exactly"
_NO_BIAS_MOE = "its experts have no bias, so no bias can carry the offset"


def _remote(model_type: str, config_class: str, model_class: str, reason: str, **kw: Any) -> ArchitectureSpec:
    auto = kw.pop("auto_classes", ("AutoModelForCausalLM",))
    return ArchitectureSpec(
        model_type,
        Strategy.REMOTE_CODE,
        down_bias="steering_vector",
        remote=RemoteCode(config_class, model_class, reason, auto),
        notes=f"Opt-in remote code: {reason}.",
        **kw,
    )


_REMOTE_ENTRIES = (
    _remote("gemma2", "Gemma2Config", "Gemma2ForCausalLM", f"{_NO_SITE} (post_feedforward_layernorm)"),
    _remote("gemma3_text", "Gemma3TextConfig", "Gemma3ForCausalLM", f"{_NO_SITE} (post_feedforward_layernorm)"),
    _remote(
        "gemma3",
        "Gemma3Config",
        "Gemma3ForConditionalGeneration",
        f"{_NO_SITE} (post_feedforward_layernorm); multimodal, steering its language model",
        layers="model.language_model.layers",
        backbone="model.language_model",
        auto_classes=("AutoModelForCausalLM", "AutoModelForImageTextToText"),
    ),
    _remote("olmo2", "Olmo2Config", "Olmo2ForCausalLM", f"{_NO_SITE} (post-norm blocks)"),
    _remote("mixtral", "MixtralConfig", "MixtralForCausalLM", _NO_BIAS_MOE),
    _remote("qwen2_moe", "Qwen2MoeConfig", "Qwen2MoeForCausalLM", f"{_NO_BIAS_MOE} (nor does its shared expert)"),
    _remote(
        "qwen3_moe",
        "Qwen3MoeConfig",
        "Qwen3MoeForCausalLM",
        f"{_NO_BIAS_MOE} (its o_proj bias would move the site half a layer earlier)",
    ),
)
_ENTRIES = (*_ENTRIES, *_REMOTE_ENTRIES)

REGISTRY: Mapping[str, ArchitectureSpec] = {spec.model_type: spec for spec in _ENTRIES}


@dataclass(frozen=True)
class Refusal:
    """Why a family cannot be baked, and what the user can do instead."""

    reason: str
    way_forward: str


_HOOKS = "steer it with forward hooks at run time (bakesteer.hooks.steering) instead of baking"
#: Families refused with a reason and a way forward, given in the error (none at present: every family the
#: notes list is either baked exactly or written as opt-in remote code; unknown families get the generic error).
REFUSED: Mapping[str, Refusal] = {}


def supported_model_types() -> list[str]:
    """Every ``model_type`` in the registry, sorted."""
    return sorted(REGISTRY)


def spec_for(config: Any, *, allow_remote_code: bool = False) -> ArchitectureSpec:
    """The registry entry for a parsed transformers config.

    Args:
        config: A ``PretrainedConfig`` (from ``AutoConfig``; never the raw JSON, which some configs rewrite).
        allow_remote_code: Accept families that need a generated modeling file.

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
    if spec.remote is not None and not allow_remote_code:
        raise UnsupportedArchitectureError(
            model_type,
            supported_model_types(),
            reason=f"{spec.remote.reason}; only a remote-code checkpoint can carry the steering",
            hint="pass --allow-remote-code to write one (it loads with trust_remote_code=True), or " + _HOOKS,
        )
    reason = spec.refusal(config)
    if reason:
        raise UnsupportedArchitectureError(model_type, supported_model_types(), reason=reason)
    return spec
