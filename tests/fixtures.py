"""Tiny models built from configs and saved to disk: no downloads.

Every registry entry must have a builder in FIXTURES (tests/test_architectures.py checks it).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import torch

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def make_tokenizer(directory: Path, *, vocab_size: int = 384, chat_template: bool = True) -> Any:
    """A byte-level BPE trained on the shipped prompt sets, saved to ``directory``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = []
    for name in ("harmful.txt", "harmless.txt"):
        texts += resources.files("bakesteer.data").joinpath(name).read_text().splitlines()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    if chat_template:
        fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(directory)
    return fast


#: Shared shape of every tiny fixture: 5 layers (default band 2-4), width 64, 4 heads, vocabulary of the tokenizer.
SHAPE = dict(vocab_size=384, hidden_size=64, num_hidden_layers=5, num_attention_heads=4, max_position_embeddings=256)
LLAMA_LIKE = dict(SHAPE, intermediate_size=128, num_key_value_heads=2, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def llama_config(**overrides: Any) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(**{**LLAMA_LIKE, "rms_norm_eps": 1e-5, "tie_word_embeddings": False, **overrides})


def _scale_up(model: torch.nn.Module) -> None:
    # A random model with initializer_range 0.02 has near-uniform logits; larger weights give it real preferences,
    # so greedy decoding and the steering effect are far from ties.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 2:
                param.mul_(6.0 if "embed" in name or "lm_head" in name else 3.0)
            elif name.endswith(".bias"):  # biases start at zero; random ones show that baking adds to them
                param.normal_(0.0, 0.2)


def save_model(
    config: Any,
    directory: Path,
    *,
    dtype: torch.dtype = torch.float32,
    max_shard_size: str | None = None,
    seed: int = 0,
    chat_template: bool = True,
) -> Path:
    """Build a random model from ``config`` (seeded), save it with its tokenizer, return ``directory``."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    _scale_up(model)
    model.to(dtype)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(directory, **kwargs)
    make_tokenizer(directory, vocab_size=config.get_text_config().vocab_size, chat_template=chat_template)
    return directory


def tiny_llama(directory: Path, **kw: Any) -> Path:
    """A 5-layer, 64-wide Llama with untied embeddings."""
    return save_model(llama_config(), directory, **kw)


def _builder(config_name: str, **fields: Any) -> Callable[..., Path]:
    def build(directory: Path, **kw: Any) -> Path:
        import transformers

        return save_model(getattr(transformers, config_name)(**fields), directory, **kw)

    build.__name__ = f"tiny_{config_name}"
    return build


FIXTURES: dict[str, Callable[..., Path]] = {
    "llama": tiny_llama,
    "smollm3": _builder("SmolLM3Config", **LLAMA_LIKE),
    "granite": _builder(
        "GraniteConfig", **LLAMA_LIKE, residual_multiplier=0.5, embedding_multiplier=2.0, logits_scaling=2.0
    ),
    "helium": _builder("HeliumConfig", **LLAMA_LIKE, head_dim=16),
    "seed_oss": _builder("SeedOssConfig", **LLAMA_LIKE),
    "arcee": _builder("ArceeConfig", **LLAMA_LIKE),
    "falcon": _builder(
        "FalconConfig", **SHAPE, new_decoder_architecture=True, num_kv_heads=2, bias=False, parallel_attn=True
    ),
    "starcoder2": _builder("Starcoder2Config", **LLAMA_LIKE, use_bias=True, sliding_window=None),
    "gpt2": _builder(
        "GPT2Config", vocab_size=384, n_embd=64, n_layer=5, n_head=4, n_positions=256, bos_token_id=1, eos_token_id=2
    ),
    "gpt_neox": _builder("GPTNeoXConfig", **SHAPE, intermediate_size=128, use_parallel_residual=True),
    "phi": _builder("PhiConfig", **SHAPE, intermediate_size=128, partial_rotary_factor=0.5),
    "gpt_oss": _builder(
        "GptOssConfig",
        **{**LLAMA_LIKE, "max_position_embeddings": 4096 * 32},  # its default YaRN factor 32 over 4096 positions
        head_dim=16,
        num_local_experts=4,
        num_experts_per_tok=2,
        sliding_window=8,
    ),
    "mistral": _builder("MistralConfig", **LLAMA_LIKE, sliding_window=None),
    "qwen2": _builder("Qwen2Config", **LLAMA_LIKE, use_sliding_window=False),
    "qwen3": _builder("Qwen3Config", **LLAMA_LIKE, head_dim=32, use_sliding_window=False),
    "phi3": _builder(
        "Phi3Config",
        **LLAMA_LIKE,
        sliding_window=None,
        original_max_position_embeddings=256,
    ),
    "gemma": _builder("GemmaConfig", **LLAMA_LIKE, head_dim=32),
    "gemma2": _builder("Gemma2Config", **LLAMA_LIKE, head_dim=16, sliding_window=8),
    "gemma3_text": _builder("Gemma3TextConfig", **LLAMA_LIKE, head_dim=16, sliding_window=8),
    "gemma3": _builder(
        "Gemma3Config",
        text_config=dict(LLAMA_LIKE, head_dim=16, sliding_window=8),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=28,
            patch_size=14,
        ),
        mm_tokens_per_image=4,
        image_token_index=383,
        boi_token_index=381,
        eoi_token_index=382,
    ),
    "olmo2": _builder("Olmo2Config", **LLAMA_LIKE),
    "mixtral": _builder("MixtralConfig", **LLAMA_LIKE, num_local_experts=4, num_experts_per_tok=2),
    "qwen2_moe": _builder(
        "Qwen2MoeConfig",
        **LLAMA_LIKE,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        shared_expert_intermediate_size=32,
    ),
    "qwen3_moe": _builder(
        "Qwen3MoeConfig", **LLAMA_LIKE, head_dim=16, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32
    ),
}


def write_prompt_files(folder: Path, count: int = 12) -> tuple[Path, Path]:
    """Small positive/negative .txt sets (``count`` prompts each) drawn from the shipped defaults, in ``folder``."""
    from importlib import resources

    out = []
    for name in ("harmful.txt", "harmless.txt"):
        lines = resources.files("bakesteer.data").joinpath(name).read_text().splitlines()[:count]
        path = Path(folder) / name
        path.write_text("\n".join(lines) + "\n")
        out.append(path)
    return out[0], out[1]


def output_tensors(directory: Path) -> dict[str, Any]:
    """Every weight tensor of a checkpoint directory, as transformers would find them (one file, or the index's
    shards), by key."""
    import json

    from safetensors.torch import load_file

    single = directory / "model.safetensors"
    if single.is_file():
        return load_file(single)
    shards = sorted(set(json.loads((directory / "model.safetensors.index.json").read_text())["weight_map"].values()))
    out: dict[str, Any] = {}
    for shard in shards:
        out.update(load_file(directory / shard))
    return out


#: Llama 3's rope: base 500000 and llama3 frequency scaling (factor 8 over an original 64 positions here, so the
#: scaling acts inside the tiny model's 256 positions).
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}


def as_transformers4_layout(directory: Path, *, rope_theta: float, rope_scaling: dict[str, Any] | None) -> Path:
    """Rewrite a saved tiny model's ``config.json`` and ``tokenizer_config.json`` the way transformers 4.57 writes them:
    top-level ``rope_theta`` / ``rope_scaling`` and no ``rope_parameters``, keys sorted, two-space indent;
    ``tokenizer_class`` ``PreTrainedTokenizerFast`` (what Llama 3's own repositories name)."""
    import json

    config = json.loads((directory / "config.json").read_text())
    config.pop("rope_parameters", None)
    config.update(rope_theta=rope_theta, rope_scaling=rope_scaling, transformers_version="4.57.6")
    (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tokenizer = json.loads((directory / "tokenizer_config.json").read_text())
    tokenizer["tokenizer_class"] = "PreTrainedTokenizerFast"
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer, indent=2, ensure_ascii=False) + "\n")
    return directory


def compare_with_hooked(
    output: Path, source: Path, ids: Any, *, dtype: Any, spec: str = "llama", trust_remote_code: bool = False
) -> dict[str, float]:
    """A written checkpoint against its source steered by hooks, measured here and not by bakesteer's validator:
    ``baked_vs_hooked`` and ``baked_vs_base`` are max |Δlogit| / max |logit| on ``ids`` in ``dtype``; ``floor`` is the
    hooked model in ``dtype`` against the hooked model in float32 (0 in float32). A GGUF ``source`` is dequantized
    by transformers' own loader."""
    import torch
    from transformers import AutoModelForCausalLM

    from bakesteer.architectures import REGISTRY
    from bakesteer.hooks import steering
    from bakesteer.vector import SteeringVector

    vector = SteeringVector.load(output / "steering.safetensors")
    meta = json.loads((output / "bakesteer.json").read_text())["method"]
    offsets = vector.offsets((meta["band"]["start"], meta["band"]["end_exclusive"]), meta["k"])
    source = Path(source)
    kwargs = {"gguf_file": source.name} if source.suffix == ".gguf" else {}
    where = source.parent if kwargs else source

    def logits(directory: Path, load_dtype: Any, hooked: bool, **extra: Any) -> Any:
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=load_dtype, **extra).eval()
        with torch.no_grad():
            if not hooked:
                return model(ids).logits.float()
            with steering(model, REGISTRY[spec], offsets):
                return model(ids).logits.float()

    def rel(a: Any, b: Any) -> float:
        return float((a - b).abs().max() / b.abs().max())

    baked = logits(output, dtype, hooked=False, trust_remote_code=trust_remote_code)
    hooked = logits(where, dtype, hooked=True, **kwargs)
    base = logits(where, dtype, hooked=False, **kwargs)
    exact = logits(where, torch.float32, hooked=True, **kwargs) if dtype != torch.float32 else hooked
    return {"baked_vs_hooked": rel(baked, hooked), "baked_vs_base": rel(baked, base), "floor": rel(hooked, exact)}
