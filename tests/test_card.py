"""The generated model card and plot: parseable, complete, and free of local paths."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from bakesteer import ConvertOptions, convert
from bakesteer.card import command_line
from bakesteer.fingerprint import metadata_fingerprint as fingerprint
from bakesteer.plots import plot_mu
from bakesteer.record import Record


@pytest.fixture(scope="module")
def converted(llama_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    (llama_dir / "README.md").write_text("---\nlicense: apache-2.0\n---\n# tiny\n")
    try:
        out = tmp_path_factory.mktemp("card") / "out"
        return convert(str(llama_dir), out, ConvertOptions(alpha=-1.5, layers="1-3"))
    finally:
        (llama_dir / "README.md").unlink()


def test_card_parses_and_carries_every_field(converted) -> None:
    from huggingface_hub import ModelCard

    card = ModelCard.load(converted.output / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "transformers" and data["pipeline_tag"] == "text-generation"
    assert data["tags"] == ["bakesteer", "steering", "refusal"]
    assert data["license"] == "apache-2.0"  # copied from the source card
    assert "base_model" not in data  # a local source has no Hub id to link
    assert "base_model_relation" not in data
    text = card.text
    for needle in (
        "**k = -1.5** moves the activations away from those of *harmful.txt*",
        "Layers:** 1-3 of 5",
        "![Mean residual norm by layer; the steered band is shaded](mu.png)",
        "| greedy continuation (32 tokens) | identical |",
        'AutoModelForCausalLM.from_pretrained("REPO_ID")',
        "| vLLM (CPU build) | 0.32.0 | loaded and run in bakesteer's slow tier | 0.0001 |",
        "| transformers | 4.57.6 | config.json read as transformers 4.57.6 reads it: the rope, norm and vocabulary "
        "fields agree (this conversion); loaded and run in bakesteer's slow tier | 1e-05 |",
        "Needs transformers >= 4.57.6. Readers not listed were not checked.",
        "What that does to the model's answers was not measured for this card; `bakesteer eval` measures it.",
        "bakesteer convert llama --alpha -1.5 --layers 1-3 --output OUTPUT",
        converted.metadata["fingerprint"],
        "the prompt included",
    ):
        assert needle in text, needle
    assert text.count("\n| ") >= 6  # the validation table rows survive (no stray pipes)
    validated = converted.validation.relative_diff
    assert f"| transformers | {converted.metadata['environment']['transformers']} | reloaded from disk" in text
    assert f"in this conversion | {validated:.3g} |" in text
    # nothing is claimed that was not measured: no effect section, no install line for a package not on PyPI
    assert "## Measured effect" not in text and "refuse more" not in text and "pip install" not in text


def test_nothing_local_in_card_or_metadata(converted, llama_dir: Path) -> None:
    for name in ("README.md", "bakesteer.json", "config.json", "generation_config.json", "tokenizer_config.json"):
        text = (converted.output / name).read_text()
        assert str(llama_dir.parent) not in text and "/tmp" not in text and str(Path.home()) not in text


def test_fingerprint_tracks_what_changes_the_weights(converted) -> None:
    meta = converted.metadata
    assert meta["fingerprint"] == fingerprint(Record(meta))
    changed = {**meta, "options": {**meta["options"], "alpha": 2.0}}
    assert fingerprint(Record(changed)) != meta["fingerprint"]
    same = {**meta, "options": {**meta["options"], "batch_size": 99, "device": "cuda"}}
    assert fingerprint(Record(same)) == meta["fingerprint"]
    assert command_line(Record(meta)).startswith("bakesteer convert llama ")


def test_plot_is_a_valid_png(converted) -> None:
    from PIL import Image

    image = Image.open(converted.output / "mu.png").convert("RGB")
    assert image.size == (640, 320)
    colours = {colour for _, colour in image.getcolors(maxcolors=1 << 20)}
    assert (255, 228, 196) in colours  # the band
    mu = converted.metadata["method"]["mu"]
    assert plot_mu(mu, converted.band) == (converted.output / "mu.png").read_bytes()  # same numbers, same bytes


def test_fingerprint_format_is_stable() -> None:
    """Published repos store this value; a change here would republish every variant, so it is pinned."""
    from bakesteer.fingerprint import fingerprint_of

    source = {"kind": "hub", "model_id": "acme/base", "revision": "0" * 40}
    options = {"alpha": 1, "layers": "0.4:0.9", "chat_template": True, "dtype": "auto", "allow_remote_code": False}
    prompts = {"positive": "a" * 64, "negative": "b" * 64}
    value = fingerprint_of(source, "0.1.0", options, prompts)
    assert value == fingerprint_of(source, "0.1.0", {**options, "alpha": 1.0, "probes": 3}, prompts)  # 1 == 1.0
    canonical = (
        '{"bakesteer":"0.1.0","options":{"allow_remote_code":false,"alpha":1.0,"chat_template":true,"dtype":"auto",'
        '"layers":"0.4:0.9"},"prompts":{"negative":"' + "b" * 64 + '","positive":"' + "a" * 64 + '"},'
        '"source":{"kind":"hub","model_id":"acme/base","revision":"' + "0" * 40 + '"}}'
    )
    assert value == hashlib.sha256(canonical.encode()).hexdigest()
    assert value == "83565c6bb5c4ec2d9bc141f0335dcdb617ba5d3359a34ac996dc6098696cd923"
