"""How transformers 4 reads a ``config.json``: its defaults for the fields bakesteer checks, as data.

transformers 5 moved the rope fields into ``rope_parameters`` and renamed ``torch_dtype`` to ``dtype``; transformers 4
reads only the top-level ``rope_theta`` / ``rope_scaling`` (GPT-NeoX: ``rotary_emb_base`` / ``rotary_pct``) and
silently falls back to its defaults when they are absent. A checkpoint that transformers 5 reads correctly can
therefore be a different model under transformers 4; :mod:`bakesteer.configfiles` uses this table to write configs
both read alike and to check them.

The table is transformers 4.57.6's ``CONFIG_MAPPING[family]().to_dict()`` restricted to the rope, norm, vocabulary,
position, multiplier, activation and tie fields (list-valued defaults, which depend on the layer count, left out).
Regenerate it with ``tests/readers/tf4_defaults.py`` under transformers 4; the slow tier (``tests/test_readers.py``)
runs that script and fails when this table drifts from it. A family missing here (``hy_v3``) does not exist in
transformers 4: its outputs need transformers 5.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: The transformers 4 release the table was read from (and the slow tier's reader runs).
VERSION = "4.57.6"

DEFAULTS: Mapping[str, Mapping[str, Any]] = {
    "arcee": {
        "hidden_act": "relu2",
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "vocab_size": 32000,
    },
    "falcon": {
        "layer_norm_epsilon": 1e-05,
        "max_position_embeddings": 2048,
        "rope_scaling": None,
        "rope_theta": 10000.0,
        "tie_word_embeddings": True,
        "vocab_size": 65024,
    },
    "gpt2": {"layer_norm_epsilon": 1e-05, "tie_word_embeddings": True, "vocab_size": 50257},
    "gpt_neox": {
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": 2048,
        "partial_rotary_factor": 0.25,
        "rope_scaling": None,
        "rope_theta": 10000,
        "rotary_emb_base": 10000,
        "rotary_pct": 0.25,
        "tie_word_embeddings": False,
        "vocab_size": 50432,
    },
    "gpt_oss": {
        "hidden_act": "silu",
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-05,
        "rope_scaling": {
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "factor": 32.0,
            "original_max_position_embeddings": 4096,
            "rope_type": "yarn",
            "truncate": False,
        },
        "rope_theta": 150000.0,
        "tie_word_embeddings": False,
        "vocab_size": 201088,
    },
    "granite": {
        "attention_multiplier": 1.0,
        "embedding_multiplier": 1.0,
        "hidden_act": "silu",
        "logits_scaling": 1.0,
        "max_position_embeddings": 2048,
        "residual_multiplier": 1.0,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "vocab_size": 32000,
    },
    "helium": {
        "hidden_act": "silu",
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-08,
        "rope_theta": 100000.0,
        "tie_word_embeddings": False,
        "vocab_size": 48000,
    },
    "llama": {
        "hidden_act": "silu",
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "vocab_size": 32000,
    },
    "phi": {
        "hidden_act": "gelu_new",
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": 2048,
        "partial_rotary_factor": 0.5,
        "rope_scaling": None,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "vocab_size": 51200,
    },
    "seed_oss": {
        "hidden_act": "silu",
        "max_position_embeddings": 524288,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "vocab_size": 155136,
    },
    "smollm3": {
        "hidden_act": "silu",
        "max_position_embeddings": 32768,
        "no_rope_layer_interval": 4,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 2000000.0,
        "tie_word_embeddings": True,
        "vocab_size": 128256,
    },
    "starcoder2": {
        "hidden_act": "gelu_pytorch_tanh",
        "max_position_embeddings": 4096,
        "norm_epsilon": 1e-05,
        "rope_scaling": None,
        "rope_theta": 10000.0,
        "tie_word_embeddings": True,
        "vocab_size": 49152,
    },
}

#: Where transformers 4 reads a rope field under another name (GPT-NeoX's ``__init__`` overwrites ``rope_theta``
#: with ``rotary_emb_base`` and ``partial_rotary_factor`` with ``rotary_pct``).
ALIASES: Mapping[str, Mapping[str, str]] = {
    "gpt_neox": {"rope_theta": "rotary_emb_base", "partial_rotary_factor": "rotary_pct"},
}

#: transformers 4 classes that load a ``tokenizer.json`` as it is, for tokenizer configs that name a class only
#: transformers 5 has.
TOKENIZER_CLASS_FOR_4 = "PreTrainedTokenizerFast"
#: Tokenizer classes transformers 5 writes that transformers 4 does not have.
TOKENIZER_CLASSES_ONLY_IN_5 = frozenset({"TokenizersBackend"})


def knows(model_type: str) -> bool:
    """Whether transformers 4 has the family at all."""
    return model_type in DEFAULTS
