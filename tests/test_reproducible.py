"""Same inputs, same bytes: two conversions are byte-identical, and the card's reproduce command (parsed with shlex)
rebuilds the output byte for byte. The card records what a GGUF source was and carries a custom license."""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from fixtures import compare_with_hooked, output_tensors
from safetensors import safe_open

from bakesteer import ConvertOptions, convert
from bakesteer.cli import main
from bakesteer.validation import FP32_TOLERANCE


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.fixture()
def workdir(llama_dir: Path, prompt_files, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder holding the model and prompt files (one with a space in its name), as the card names them."""
    work = tmp_path / "work"
    shutil.copytree(llama_dir, work / "llama")
    (work / "llama" / "README.md").write_text(
        "---\nlicense: other\nlicense_name: tiny-license\nlicense_link: https://example.org/LICENSE\n---\n# tiny\n"
    )
    shutil.copy(prompt_files[0], work / "my harmful.txt")
    shutil.copy(prompt_files[1], work / "harmless.txt")
    monkeypatch.chdir(work)
    return work


def test_two_conversions_are_byte_identical_and_the_card_command_rebuilds_them(workdir: Path) -> None:
    from huggingface_hub import ModelCard

    options = ConvertOptions(
        alpha=-0.75,
        layers="1-3",
        positive=Path("my harmful.txt"),
        negative=Path("harmless.txt"),
        probes=4,
        greedy_tokens=8,
        batch_size=3,
    )
    first = convert("llama", workdir / "first", options).output
    again = convert("llama", workdir / "again", options).output
    assert _files(first) == _files(again)  # timings and the machine are not in the output
    assert "timings_s" not in json.loads((first / "bakesteer.json").read_text())

    card = ModelCard.load(first / "README.md")
    (line,) = [text for text in card.text.splitlines() if text.startswith("bakesteer convert ")]
    argv = shlex.split(line)
    assert argv[:3] == ["bakesteer", "convert", "llama"]
    assert argv[argv.index("--positive") + 1] == "my harmful.txt"  # quoted in the card, one argument here
    assert not {"--push-to-hub", "--private", "--commit-message", "--overwrite"} & set(argv)
    assert "pip install" not in card.text
    argv[argv.index("OUTPUT")] = "rebuilt"
    result = CliRunner().invoke(main, [*argv[1:], "--quiet"])
    assert result.exit_code == 0, result.output
    assert _files(workdir / "rebuilt") == _files(first)

    # a license: other keeps its name and link
    data = card.data.to_dict()
    assert (data["license"], data["license_name"], data["license_link"]) == (
        "other",
        "tiny-license",
        "https://example.org/LICENSE",
    )


def test_steering_file_header_is_canonical(workdir: Path) -> None:
    out = convert("llama", workdir / "out", ConvertOptions(alpha=1.0, probes=2, greedy_tokens=4)).output
    data = (out / "steering.safetensors").read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = data[8 : 8 + size].rstrip(b" ")
    assert header == json.dumps(json.loads(header), sort_keys=True, separators=(",", ":")).encode()


# --------------------------------------------------------------------------- a GGUF source, as `make demo` reads one


def _permute(weights: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's q/k row order (its converter's ``permute``), which transformers' GGUF loader undoes."""
    return (
        weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def write_llama_gguf(model_dir: Path, path: Path) -> Path:
    """The tiny Llama of ``model_dir`` as an F32 GGUF file written with the ``gguf`` package's writer."""
    import gguf
    import numpy as np
    from safetensors.torch import load_file

    config = json.loads((model_dir / "config.json").read_text())
    tokenizer = json.loads((model_dir / "tokenizer.json").read_text())
    tokenizer_config = json.loads((model_dir / "tokenizer_config.json").read_text())
    state = load_file(model_dir / "model.safetensors")
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(float(config.get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    vocab = sorted(tokenizer["model"]["vocab"].items(), key=lambda kv: kv[1])
    specials = {t["content"]: t["id"] for t in tokenizer["added_tokens"]}
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([token for token, _ in vocab])
    writer.add_token_types([3 if token in specials else 1 for token, _ in vocab])
    merges = tokenizer["model"]["merges"]
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    writer.add_bos_token_id(specials[tokenizer_config["bos_token"]])
    writer.add_eos_token_id(specials[tokenizer_config["eos_token"]])
    writer.add_pad_token_id(specials[tokenizer_config["pad_token"]])
    writer.add_chat_template((model_dir / "chat_template.jinja").read_text())
    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v"}
    names |= {"self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up"}
    names |= {"mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    for key, tensor in state.items():
        if key == "model.embed_tokens.weight":
            name = "token_embd.weight"
        elif key == "model.norm.weight":
            name = "output_norm.weight"
        elif key == "lm_head.weight":
            name = "output.weight"
        else:
            _, _, layer, module, kind = key.split(".", 4)
            sub, _, param = kind.rpartition(".")
            name = f"blk.{layer}.{names[module + '.' + sub if sub else module]}.{param}"
            if name.endswith("attn_q.weight"):
                tensor = _permute(tensor, heads)
            elif name.endswith("attn_k.weight"):
                tensor = _permute(tensor, kv_heads)
        writer.add_tensor(name, np.ascontiguousarray(tensor.float().numpy()))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_gguf_source_converts_and_is_recorded(llama_dir: Path, prompt_files, tmp_path: Path) -> None:
    """The path `make demo` takes (a GGUF file, dequantized, converted, validated), on a file written here."""
    from huggingface_hub import ModelCard

    gguf_path = write_llama_gguf(llama_dir, tmp_path / "tiny.F32.gguf")
    options = ConvertOptions(positive=prompt_files[0], negative=prompt_files[1], probes=4, greedy_tokens=8)
    result = convert(str(gguf_path), tmp_path / "out", options)
    measured = compare_with_hooked(
        result.output, gguf_path, torch.tensor([[1, 40, 41, 42, 43, 100]]), dtype=torch.float32
    )
    assert measured["baked_vs_hooked"] <= FP32_TOLERANCE < 1e-2 < measured["baked_vs_base"]
    assert result.metadata["base_model"] == {
        "kind": "gguf",
        "model_id": "tiny.F32.gguf",
        "revision": hashlib.sha256(gguf_path.read_bytes()).hexdigest(),
        "quantization": "F32",
        "dequantized_to": "float32",
    }
    # F32 dequantizes exactly, q/k rows un-permuted: every weight equals the original model's
    baked = output_tensors(result.output)
    with safe_open(str(llama_dir / "model.safetensors"), "pt") as original:
        for key in original.keys():  # the original has no biases; the baked output adds them
            assert torch.equal(original.get_tensor(key), baked[key]), key
    card = ModelCard.load(result.output / "README.md").text
    assert "The source was the GGUF file `tiny.F32.gguf` (F32, SHA-256 `" in card
    assert "dequantized to float32" in card


def test_saved_tokenizer_config_does_not_record_how_it_was_loaded(
    llama_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """transformers writes ``local_files_only`` (which follows HF_HUB_OFFLINE) into the tokenizer config it saves:
    the same conversion would differ between an offline and an online shell."""
    import huggingface_hub.constants as c

    options = ConvertOptions(alpha=1.0, probes=2, greedy_tokens=4)
    offline = convert(str(llama_dir), tmp_path / "offline", options).output
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    online = convert(str(llama_dir), tmp_path / "online", options).output
    assert _files(offline) == _files(online)
    assert "local_files_only" not in json.loads((offline / "tokenizer_config.json").read_text())
