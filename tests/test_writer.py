"""The streaming safetensors rewrite and the atomic output directory."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from bakesteer.bake import BiasPlan
from bakesteer.writer import AtomicDirectory, read_header, save_state_dict, stream_rewrite


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "a.weight": torch.randn(7, 5, generator=g),
        "b.bias": torch.randn(5, generator=g).to(torch.bfloat16),
        "c.ids": torch.arange(11, dtype=torch.int64),
        "d.mask": torch.tensor([True, False, True]),
        "e.half": torch.randn(3, 3, generator=g).to(torch.float16),
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_stream_rewrite_matches_reference(tmp_path: Path, dtype: torch.dtype) -> None:
    src = _tensors()
    save_file(src, str(tmp_path / "src.safetensors"), metadata={"format": "pt"})
    delta = torch.full((5,), 0.1)
    plan = BiasPlan(new={}, add={"b.bias": delta}, config_updates={}, strategy="existing_bias")
    extra = {"z.new": torch.ones(4, dtype=dtype)}
    keys, size = stream_rewrite(
        tmp_path / "src.safetensors", tmp_path / "out.safetensors", plan=plan, dtype=dtype, extra=extra
    )
    got = load_file(str(tmp_path / "out.safetensors"))
    assert sorted(keys) == ["a.weight", "b.bias", "c.ids", "d.mask", "e.half", "z.new"] and keys[-1] == "z.new"
    for key in ("a.weight", "e.half"):
        assert torch.equal(got[key], src[key].to(dtype))
    # the added bias is added in float32 to the stored value and rounded once
    assert torch.equal(got["b.bias"], (src["b.bias"].float() + delta).to(dtype))
    assert torch.equal(got["c.ids"], src["c.ids"]) and torch.equal(got["d.mask"], src["d.mask"])
    assert torch.equal(got["z.new"], extra["z.new"])
    header, start = read_header(tmp_path / "out.safetensors")
    assert start % 8 == 0 and header["__metadata__"] == {"format": "pt"}
    assert size == (tmp_path / "out.safetensors").stat().st_size - start


def test_stream_rewrite_refuses_clashes(tmp_path: Path) -> None:
    save_file(_tensors(), str(tmp_path / "src.safetensors"))
    plan = BiasPlan(new={}, add={}, config_updates={}, strategy="existing_bias")
    with pytest.raises(ValueError, match="twice"):
        stream_rewrite(
            tmp_path / "src.safetensors",
            tmp_path / "o.safetensors",
            plan=plan,
            dtype=torch.float32,
            extra={"a.weight": torch.zeros(1)},
        )


def test_save_state_dict_dedupes_ties_and_shards(tmp_path: Path) -> None:
    emb = torch.randn(10, 4)
    state = {"embed.weight": emb, "w": torch.randn(100, 4), "lm_head.weight": emb}
    files, index = save_state_dict(state, tmp_path, max_shard_bytes=1000)
    assert index == "model.safetensors.index.json" and len(files) == 2
    names = set()
    for f in files:
        with safe_open(str(tmp_path / f), "pt") as h:
            names |= set(h.keys())
    assert names == {"embed.weight", "w"}


def test_atomic_directory_commits_or_vanishes(tmp_path: Path) -> None:
    with AtomicDirectory(tmp_path / "a" / "b") as staging:
        (staging.path / "f").write_text("x")
        staging.commit()
    assert (tmp_path / "a" / "b" / "f").read_text() == "x"
    with pytest.raises(RuntimeError), AtomicDirectory(tmp_path / "c" / "d") as staging:
        (staging.path / "f").write_text("x")
        raise RuntimeError
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["b"]
