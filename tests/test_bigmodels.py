"""Big-model paths on tiny models: accelerate device maps with disk offload, the float32 floor without a float32 copy,
reference logits spilled to disk, and source files linked into the output instead of rewritten."""

from __future__ import annotations

import copy
import json
import logging
import os
import tempfile
from pathlib import Path

import pytest
import torch
from fixtures import llama_config, output_tensors, save_model

from bakesteer import ConvertOptions, convert
from bakesteer.architectures import REGISTRY
from bakesteer.errors import OptionError
from bakesteer.hooks import steering
from bakesteer.placement import Placement, input_device, parse_max_memory
from bakesteer.prompts import load_prompt_set, render_prompts
from bakesteer.validation import float32_units, reference_outputs
from bakesteer.vector import SteeringVector
from bakesteer.writer import NEW_SHARD, SINGLE_SOURCE_SHARD

SPEC = REGISTRY["llama"]


def fast(prompt_files, **kw) -> ConvertOptions:
    return ConvertOptions(positive=prompt_files[0], negative=prompt_files[1], probes=4, greedy_tokens=8, **kw)


@pytest.fixture(scope="module")
def bf16_tied_sharded(models_dir: Path) -> Path:
    """A bf16 Llama with tied embeddings in 17 shards: the hardest case for offload (accelerate caches tied weights)."""
    return save_model(
        llama_config(tie_word_embeddings=True), models_dir / "llama-bf16-tied", dtype=torch.bfloat16, seed=5,
        max_shard_size="60KB",
    )  # fmt: skip


def _tree(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_disk_offload_converts_bit_identically(
    bf16_tied_sharded: Path, prompt_files, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """--max-memory far below the model's size puts every layer on disk; the output does not change by one byte."""
    size = sum(p.stat().st_size for p in bf16_tied_sharded.glob("*.safetensors"))
    assert size > 200_000
    whole = convert(str(bf16_tied_sharded), tmp_path / "whole", fast(prompt_files))
    with caplog.at_level(logging.INFO, logger="bakesteer.placement"):
        offloaded = convert(str(bf16_tied_sharded), tmp_path / "offloaded", fast(prompt_files, max_memory="cpu=10KB"))
    maps = [r.getMessage() for r in caplog.records if "device map" in r.getMessage()]
    assert len(maps) == 2 and all("'disk'" in m for m in maps)  # the source and the validation reload
    assert offloaded.validation is not None and offloaded.validation.dtype == "bfloat16"
    assert offloaded.validation.floor_relative == whole.validation.floor_relative  # the floor under offload too
    assert offloaded.validation.to_dict() == whole.validation.to_dict()
    assert _tree(offloaded.output) == _tree(whole.output)  # every tensor, the card and bakesteer.json
    assert not any(p.name.endswith(".scratch") for p in tmp_path.iterdir())  # the offload folder went with it


def test_float32_units_equal_a_float32_copy(bf16_tied_sharded: Path, prompt_files, tmp_path: Path) -> None:
    """The floor's float32 pass, one unit at a time, equals the float32 model bit for bit, in memory and offloaded,
    and leaves every parameter as it was."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(bf16_tied_sharded, dtype=torch.bfloat16).eval()
    offsets = torch.zeros(5, 64)
    offsets[2:4] = torch.randn(2, 64, generator=torch.Generator().manual_seed(0))
    ids = torch.tensor([[3, 17, 99, 250, 7, 7, 42], [1, 2, 3, 4, 5, 6, 7]])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        full = copy.deepcopy(model).float()
        with steering(full, SPEC, offsets):
            expected = full(ids).logits
        with steering(model, SPEC, offsets), float32_units(model, SPEC):
            units = model(ids).logits
        assert units.dtype == torch.float32 and torch.equal(units, expected)
        after = model.state_dict()
        assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())

        offloaded = AutoModelForCausalLM.from_pretrained(
            bf16_tied_sharded, dtype=torch.bfloat16, device_map="auto", max_memory={"cpu": "10KB"},
            offload_folder=str(tmp_path / "offload"),
        ).eval()  # fmt: skip
        assert set(offloaded.hf_device_map.values()) == {"disk"}
        assert input_device(offloaded) == torch.device("cpu")
        with steering(offloaded, SPEC, offsets), float32_units(offloaded, SPEC):
            assert torch.equal(offloaded(ids).logits, expected)
        # and afterwards it runs in bf16 again, exactly like the model in memory
        with steering(offloaded, SPEC, offsets):
            low = offloaded(ids).logits
        with steering(model, SPEC, offsets):
            assert torch.equal(low, model(ids).logits)


def test_reference_logits_spill_to_disk_unchanged(llama_dir: Path, prompt_files, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(llama_dir)
    pos = load_prompt_set(prompt_files[0], "positive")
    probes = render_prompts(tok, list(pos.heldout[:3]), chat_template=True)
    offsets = torch.zeros(5, 64)
    offsets[3] = 0.5
    io = {"batch_size": 2, "pad_id": 0, "greedy_tokens": 4}
    memory = reference_outputs(model, SPEC, offsets, probes, **io)
    spilled = reference_outputs(model, SPEC, offsets, probes, folder=tmp_path, spill_bytes=0, **io)
    assert not memory.hooked.store.spilled and spilled.hooked.store.spilled
    assert list(tmp_path.iterdir()) == []  # an unlinked temporary file: nothing to leave behind
    for index in range(len(probes)):
        assert torch.equal(memory.hooked.store.get(index), spilled.hooked.store.get(index))
    assert spilled.hooked.max_abs == memory.hooked.max_abs and torch.equal(spilled.hooked.last, memory.hooked.last)
    spilled.close()


def _full_rewrite(source: Path, output: Path, target: Path) -> Path:
    """The same bake written the ordinary way, without bakesteer's writer: load the base with the bias flag on, set
    the biases from steering.safetensors and save_pretrained every tensor anew."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(source)
    config.mlp_bias = True
    model = AutoModelForCausalLM.from_pretrained(source, config=config, dtype=torch.float32).eval()
    meta = json.loads((output / "bakesteer.json").read_text())
    band = (meta["method"]["band"]["start"], meta["method"]["band"]["end_exclusive"])
    offsets = SteeringVector.load(output / "steering.safetensors").offsets(band, meta["method"]["k"])
    with torch.no_grad():
        for index, layer in enumerate(model.model.layers):
            layer.mlp.down_proj.bias.copy_(offsets[index])
            layer.mlp.gate_proj.bias.zero_()
            layer.mlp.up_proj.bias.zero_()
    model.save_pretrained(target)
    return target


@pytest.mark.parametrize("fixture", ["llama_dir", "llama_sharded_dir"])
def test_linked_output_loads_like_a_full_rewrite(fixture: str, request, prompt_files, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    source: Path = request.getfixturevalue(fixture)
    result = convert(str(source), tmp_path / "out", fast(prompt_files))
    out = result.output
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert not (out / "model.safetensors").exists()  # nothing stale beside the index
    assert shards == {p.name for p in out.glob("*.safetensors")} - {"steering.safetensors"}
    source_files = [source / "model.safetensors"] if fixture == "llama_dir" else sorted(source.glob("model-0*"))
    linked = [SINGLE_SOURCE_SHARD] if fixture == "llama_dir" else [p.name for p in source_files]
    for src, name in zip(source_files, linked, strict=True):
        assert (out / name).stat().st_ino == src.stat().st_ino  # hard-linked, not copied
    new_bytes = (out / NEW_SHARD).stat().st_size
    assert new_bytes < 0.05 * sum(p.stat().st_size for p in source_files)
    assert result.metadata["output"]["weight_files"] == [*linked, NEW_SHARD]

    reference = _full_rewrite(source, out, tmp_path / "rewritten")
    ours, theirs = output_tensors(out), output_tensors(reference)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    ids = torch.tensor([[5, 9, 200, 31, 8]])
    with torch.no_grad():
        a = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)(ids).logits
        b = AutoModelForCausalLM.from_pretrained(reference, dtype=torch.float32)(ids).logits
    assert torch.equal(a, b)


def _other_filesystem(path: Path) -> Path | None:
    for candidate in (Path("/dev/shm"), Path(tempfile.gettempdir()), Path.home()):
        try:
            if candidate.is_dir() and os.access(candidate, os.W_OK) and candidate.stat().st_dev != path.stat().st_dev:
                return candidate
        except OSError:
            continue
    return None


def test_across_filesystems_the_source_is_copied(llama_sharded_dir: Path, prompt_files, tmp_path: Path) -> None:
    """Hard links cannot cross filesystems: the unchanged shards are then streamed copies, byte for byte."""
    other = _other_filesystem(tmp_path)
    if other is None:
        pytest.skip("no second writable filesystem on this machine")
    with tempfile.TemporaryDirectory(dir=other) as folder:
        output = Path(folder) / "out"
        result = convert(str(llama_sharded_dir), output, fast(prompt_files))
        for name in result.metadata["output"]["weight_files"][:-1]:
            copied, original = output / name, llama_sharded_dir / name
            assert copied.stat().st_nlink == 1 and copied.read_bytes() == original.read_bytes()


def test_max_memory_is_parsed_and_checked() -> None:
    assert parse_max_memory("0=70GiB, 1=70GiB,cpu=200GiB") == {0: "70GiB", 1: "70GiB", "cpu": "200GiB"}
    for bad, reason in [("0:70GiB", "cannot parse"), ("gpu=1GiB", "unknown device"), ("cpu=lots", "size")]:
        with pytest.raises(OptionError, match=reason):
            parse_max_memory(bad)
    with pytest.raises(OptionError, match="unknown device map"):
        ConvertOptions(device_map="everywhere").check()
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(OptionError, match=f"GPU {gpus} does not exist here"):
        ConvertOptions(max_memory=f"{gpus}=1GiB,cpu=1GiB").check()
    placement = Placement(torch.device("cpu"), "auto", {"cpu": "1GiB"}, None).with_offload_folder(Path("/x"))
    assert placement.load_kwargs() == {"device_map": "auto", "max_memory": {"cpu": "1GiB"}, "offload_folder": "/x"}
    assert Placement(torch.device("cpu")).load_kwargs() == {}


def test_sweep_and_eval_under_disk_offload_measure_the_same(
    bf16_tied_sharded: Path, prompt_files, tmp_path: Path
) -> None:
    """Hooks on offloaded blocks steer as in memory: a sweep and an eval with every layer on disk report the same
    metrics and completions as without a device map."""
    from bakesteer.evaluate import evaluate
    from bakesteer.sweep import sweep

    eval_file = tmp_path / "eval.txt"
    from importlib import resources

    lines = resources.files("bakesteer.data").joinpath("eval_prompts.txt").read_text().splitlines()[:8]
    eval_file.write_text("\n".join(lines) + "\n")
    options = fast(prompt_files, eval_prompts=eval_file, max_new_tokens=6)
    grid = {"alphas": (0.0, 1.5), "modes": ("broadcast", "last-token")}
    plain = sweep(str(bf16_tied_sharded), tmp_path / "plain", options, **grid)
    disk = sweep(str(bf16_tied_sharded), tmp_path / "disk", options.replace(max_memory="cpu=10KB"), **grid)
    assert [(r.alpha, r.mode) for r in disk.runs] == [(r.alpha, r.mode) for r in plain.runs]
    for a, b in zip(plain.runs, disk.runs, strict=True):
        assert a.metrics == b.metrics and a.samples == b.samples
    assert disk.run(1.5).metrics["kl"] > 0

    baked = convert(str(bf16_tied_sharded), tmp_path / "baked", options.replace(alpha=1.5)).output
    whole = evaluate(baked, base=str(bf16_tied_sharded), options=options)
    offloaded = evaluate(baked, base=str(bf16_tied_sharded), options=options.replace(max_memory="cpu=10KB"))
    assert offloaded.metrics == whole.metrics and offloaded.samples == whole.samples
