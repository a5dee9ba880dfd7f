"""A tiny Llama GGUF file written with the ``gguf`` package (llama.cpp's tensor names and tokenizer keys): no
download, loads with transformers' ``gguf_file=``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def write_tiny_gguf(path: Path, *, rope_theta: float = 10000.0, seed: int = 0, norm_dtype: Any = np.float32) -> Path:
    """A 5-layer, 64-wide Llama in F32 with a byte-level BPE tokenizer (the fixtures' tokenizer), rope base
    ``rope_theta``; ``norm_dtype`` stores the final norm in another type (F64 is one gguf cannot dequantize)."""
    import tempfile

    import gguf
    from fixtures import make_tokenizer

    with tempfile.TemporaryDirectory() as folder:
        make_tokenizer(Path(folder), vocab_size=384)
        model = json.loads((Path(folder) / "tokenizer.json").read_text())["model"]
    vocab = sorted(model["vocab"].items(), key=lambda kv: kv[1])
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    tokens = [t for t, _ in vocab]
    hidden, layers, heads, kv_heads, ffn, n_vocab = 64, 5, 4, 2, 128, len(tokens)
    rng = np.random.default_rng(seed)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(256)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_rope_freq_base(rope_theta)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(n_vocab)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if t.startswith("<|") else gguf.TokenType.NORMAL for t in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(0)

    def tensor(name: str, *shape: int, scale: float = 0.2) -> None:
        writer.add_tensor(name, (rng.standard_normal(shape) * scale).astype(np.float32))

    tensor("token_embd.weight", n_vocab, hidden, scale=1.0)
    for i in range(layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, dtype=np.float32))
        tensor(f"blk.{i}.attn_q.weight", hidden, hidden)
        tensor(f"blk.{i}.attn_k.weight", kv_heads * hidden // heads, hidden)
        tensor(f"blk.{i}.attn_v.weight", kv_heads * hidden // heads, hidden)
        tensor(f"blk.{i}.attn_output.weight", hidden, hidden)
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, dtype=np.float32))
        tensor(f"blk.{i}.ffn_gate.weight", ffn, hidden)
        tensor(f"blk.{i}.ffn_up.weight", ffn, hidden)
        tensor(f"blk.{i}.ffn_down.weight", hidden, ffn)
    writer.add_tensor("output_norm.weight", np.ones(hidden, dtype=norm_dtype))
    tensor("output.weight", n_vocab, hidden, scale=1.0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
