"""Tiny models built from configs and saved to disk: no downloads.

Every registry entry must have a builder in FIXTURES (tests/test_architectures.py checks it).
"""

from __future__ import annotations

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


def llama_config(**overrides: Any) -> Any:
    from transformers import LlamaConfig

    kwargs = dict(
        vocab_size=384,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=5,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


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
    make_tokenizer(directory, vocab_size=config.vocab_size, chat_template=chat_template)
    return directory


def tiny_llama(directory: Path, **kw: Any) -> Path:
    """A 5-layer, 64-wide Llama with untied embeddings."""
    return save_model(llama_config(), directory, **kw)


FIXTURES: dict[str, Callable[..., Path]] = {
    "llama": tiny_llama,
}
