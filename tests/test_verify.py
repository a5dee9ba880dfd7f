"""`bakesteer verify` (issue 18): an untouched output verifies, locally and from the loopback Hub without the base's
weights; every tampering is named (file, tensor, layer, amount)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import TOKEN
from safetensors import safe_open
from safetensors.torch import save_file

from bakesteer import ConvertOptions, convert
from bakesteer.cli import main
from bakesteer.errors import NotAnOutputError
from bakesteer.verify import VerifyError, verify

BIAS = "model-steering-biases.safetensors"


@pytest.fixture(scope="module")
def baked(llama_dir: Path, prompt_files, tmp_path_factory: pytest.TempPathFactory) -> Path:
    options = ConvertOptions(
        alpha=-0.75, layers="1-3", positive=prompt_files[0], negative=prompt_files[1], probes=2, greedy_tokens=4
    )
    return convert(str(llama_dir), tmp_path_factory.mktemp("verify") / "out", options).output


def _copy(baked: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(baked, target)  # new files: the tampering never reaches the source the output links
    return target


def _cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    assert "Traceback" not in result.output + result.stderr, result.output
    return result.exit_code, result.stdout, result.stderr


def test_an_untouched_output_verifies(baked: Path, llama_dir: Path) -> None:
    report = verify(baked, base=str(llama_dir))
    assert report.ok, [str(d) for d in report.differences]
    assert report.linked == ["model-base.safetensors"]  # the base's own file, byte for byte
    assert report.files == 8 and report.downloaded_bytes == 0
    assert report.verdict().startswith("verified: out is llama@sha256:")
    code, out, _ = _cli("verify", str(baked), "--base", str(llama_dir))
    assert code == 0 and out.startswith("verified: out is llama@sha256:") and "layers 1-3" in out


def _names(report) -> list[str]:
    return [str(d) for d in report.differences]


def test_one_byte_changed_in_a_base_shard_is_named(baked: Path, llama_dir: Path, tmp_path: Path) -> None:
    copy = _copy(baked, tmp_path)
    shard = copy / "model-base.safetensors"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0x01  # the last tensor's data
    shard.write_bytes(bytes(data))
    report = verify(copy, base=str(llama_dir))
    (line,) = _names(report)
    assert line.startswith("model-base.safetensors:") and "differs by up to" in line


def test_one_bias_value_changed_is_named_with_its_layer_and_amount(
    baked: Path, llama_dir: Path, tmp_path: Path
) -> None:
    copy = _copy(baked, tmp_path)
    with safe_open(str(copy / BIAS), framework="pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    tensors["model.layers.2.mlp.down_proj.bias"][7] += 0.125
    save_file(tensors, str(copy / BIAS), metadata={"format": "pt"})
    code, _, err = _cli("verify", str(copy), "--base", str(llama_dir))
    assert code == 3
    assert f"  {BIAS}:model.layers.2.mlp.down_proj.bias: differs by up to 0.125 (layer 2)\n" in err
    assert err.rstrip().endswith("in 1 place(s)")


def test_an_extra_tensor_is_named(baked: Path, llama_dir: Path, tmp_path: Path) -> None:
    copy = _copy(baked, tmp_path)
    with safe_open(str(copy / BIAS), framework="pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    tensors["model.layers.0.mlp.hidden_nudge"] = torch.ones(64)
    save_file(tensors, str(copy / BIAS), metadata={"format": "pt"})
    assert f"{BIAS}:model.layers.0.mlp.hidden_nudge: a tensor the plan does not explain" in _names(
        verify(copy, base=str(llama_dir))
    )


def test_a_changed_config_field_is_named(baked: Path, llama_dir: Path, tmp_path: Path) -> None:
    copy = _copy(baked, tmp_path)
    config = json.loads((copy / "config.json").read_text())
    config["rms_norm_eps"] = 1e-3
    (copy / "config.json").write_text(json.dumps(config, indent=2))
    (line,) = _names(verify(copy, base=str(llama_dir)))
    assert line == "config.json: 'rms_norm_eps' is 0.001, expected 1e-05"


def test_a_changed_tokenizer_file_is_named(baked: Path, llama_dir: Path, tmp_path: Path) -> None:
    copy = _copy(baked, tmp_path)
    config = json.loads((copy / "tokenizer_config.json").read_text())
    config["eos_token"] = "<|im_start|>"
    (copy / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (line,) = _names(verify(copy, base=str(llama_dir)))
    assert line.startswith("tokenizer_config.json: 'eos_token' is \"<|im_start|>\"")


def test_an_edited_record_and_an_added_file_are_named(baked: Path, llama_dir: Path, tmp_path: Path) -> None:
    copy = _copy(baked, tmp_path)
    record = json.loads((copy / "bakesteer.json").read_text())
    record["method"]["k"] = -0.5  # a smaller claim than what was baked
    (copy / "bakesteer.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    (copy / "notes.py").write_text("print('hi')\n")
    lines = _names(verify(copy, base=str(llama_dir)))
    assert (
        "bakesteer.json: states k=-0.5 in layers 1-3; steering.safetensors was written with k=-0.75 in layers 1-3"
        in lines
    )
    assert "bakesteer.json: states k=-0.5 but its options say --alpha -0.75" in lines
    assert "notes.py: not part of the output its record lists" in lines
    assert any(line.startswith(f"{BIAS}:model.layers.1.mlp.down_proj.bias: differs by up to") for line in lines)


def test_edited_options_break_the_fingerprint(baked: Path, llama_dir: Path, tmp_path: Path) -> None:
    copy = _copy(baked, tmp_path)
    record = json.loads((copy / "bakesteer.json").read_text())
    record["options"]["layers"] = "0-4"
    (copy / "bakesteer.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    assert _names(verify(copy, base=str(llama_dir))) == [
        "bakesteer.json: its fingerprint does not match its contents (edited)"
    ]


def test_bad_inputs_are_one_line(baked: Path, llama_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(NotAnOutputError, match="is not a bakesteer output"):
        verify(llama_dir, base=str(llama_dir))
    with pytest.raises(VerifyError, match="from a local directory whose path is not recorded") as err:
        verify(baked)
    assert err.value.one_line().endswith(f"pass that base with --base (its identity is {err.value.hint.split()[-1]}")
    assert "sha256:" in err.value.hint
    copy = _copy(baked, tmp_path)
    (copy / BIAS).unlink()
    assert f"{BIAS}: missing" in _names(verify(copy, base=str(llama_dir)))
    save_file({"model.layers.1.mlp.down_proj.bias": torch.zeros(3)}, str(copy / BIAS), metadata={"format": "pt"})
    lines = _names(verify(copy, base=str(llama_dir)))
    assert f"{BIAS}:model.layers.1.mlp.down_proj.bias: torch.float32 [3], expected torch.float32 [64]" in lines
    code, _, err_text = _cli("verify", str(tmp_path / "nowhere"), "--base", str(llama_dir))
    assert (
        code == 2 and err_text.count("\n") == 1 and "nowhere is not a bakesteer output (no such directory)" in err_text
    )


def test_a_hub_output_verifies_without_the_base_weights_and_a_moved_base_is_named(
    hub, llama_dir: Path, prompt_files, tmp_path: Path
) -> None:
    from huggingface_hub import HfApi

    api = HfApi(token=TOKEN)
    api.create_repo("acme/base")
    first = api.upload_folder(repo_id="acme/base", folder_path=str(llama_dir)).oid
    options = ConvertOptions(alpha=1.0, positive=prompt_files[0], negative=prompt_files[1], probes=2, greedy_tokens=4)
    convert("acme/base", tmp_path / "out", options.replace(push_to_hub="me/steered"))
    hub.state.bytes_served.clear()
    hub.state.requests.clear()

    report = verify("me/steered")
    assert report.ok, _names(report)
    assert report.base == f"acme/base@{first}" and report.linked == ["model-base.safetensors"]
    base_weights = (llama_dir / "model.safetensors").stat().st_size
    assert "acme/base" not in {repo for repo, n in hub.state.bytes_served.items() if n >= base_weights}
    served = sum(hub.state.bytes_served.values())
    # small files and the bias shard only (some may come from the client's cache of the conversion's download)
    assert 0 < served <= report.downloaded_bytes < base_weights / 10
    assert not [p for _, p in hub.state.requests if p.endswith("/model.safetensors") and "acme/base" in p]

    # the base moves on: a new commit changes its weights
    changed = tmp_path / "changed"
    shutil.copytree(llama_dir, changed)
    with safe_open(str(changed / "model.safetensors"), framework="pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    tensors["model.norm.weight"] = tensors["model.norm.weight"] * 1.5
    save_file(tensors, str(changed / "model.safetensors"), metadata={"format": "pt"})
    second = api.upload_folder(repo_id="acme/base", folder_path=str(changed)).oid
    assert verify("me/steered").ok  # the recorded commit is still what it was
    lines = _names(verify("me/steered", base="acme/base"))
    assert f"base: acme/base@{second} is not the recorded base acme/base@{first}" in lines
    assert "model-base.safetensors:model.norm.weight: differs by up to" in " ".join(lines)

    # what cannot be reached is one line, exit 2
    for target, needle in (
        (["me/nothing-here"], "read me/nothing-here failed: repository or branch not found"),
        (["me/steered", "--base", "acme/gone"], "read acme/gone failed: repository or branch not found"),
    ):
        code, _, err = _cli("verify", *target)
        assert code == 2 and err.count("\n") == 1 and needle in err, err


# --------------------------------------------------------------------------- unbake


def test_unbake_writes_the_base_back_tensor_for_tensor(baked: Path, llama_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    code, out, err = _cli("unbake", str(baked), "-o", str(tmp_path / "base"))
    assert out == f"wrote the base of out to {tmp_path / 'base'}\n"
    assert code == 0, err
    base = tmp_path / "base"
    assert sorted(p.name for p in base.iterdir()) == sorted(
        ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
        + [p.name for p in llama_dir.iterdir() if p.name == "chat_template.jinja"]
    )
    assert (base / "model.safetensors").read_bytes() == (llama_dir / "model.safetensors").read_bytes()
    config = json.loads((base / "config.json").read_text())
    assert config["mlp_bias"] is False
    model, info = AutoModelForCausalLM.from_pretrained(base, output_loading_info=True)
    original = AutoModelForCausalLM.from_pretrained(llama_dir)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.model.layers[2].mlp.down_proj.bias is None
    ids = torch.tensor([[1, 40, 41, 42, 100, 200]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, original(ids).logits)
    original_state = original.state_dict()
    assert {k: v for k, v in model.state_dict().items()}.keys() == original_state.keys()
    assert all(torch.equal(v, original_state[k]) for k, v in model.state_dict().items())


def test_unbake_refuses_what_does_not_hold_its_base(llama_dir: Path, prompt_files, tmp_path: Path) -> None:
    options = ConvertOptions(
        alpha=1.0, dtype="bfloat16", positive=prompt_files[0], negative=prompt_files[1], probes=2, greedy_tokens=4
    )
    cast = convert(str(llama_dir), tmp_path / "cast", options).output
    code, _, err = _cli("unbake", str(cast), "-o", str(tmp_path / "base"))
    assert code == 2 and err.count("\n") == 1
    assert "cannot unbake cast: it was written with --dtype bfloat16: its shards may be a cast" in err
    assert not (tmp_path / "base").exists()


# --------------------------------------------------------------------------- audit


def test_audit_finds_nothing_in_a_clean_model_and_the_recorded_band_and_dose_in_a_bake(
    baked: Path, llama_dir: Path
) -> None:
    import math

    from bakesteer.audit import audit

    code, out, _ = _cli("audit", str(llama_dir))
    assert code == 0 and out == "no steering found in llama (5 blocks, no MLP output offset)\n"

    record = json.loads((baked / "bakesteer.json").read_text())["method"]
    report = audit(str(baked), vector=baked / "steering.safetensors")
    assert report.band == (record["band"]["start"], record["band"]["end_exclusive"]) == (1, 4)
    for reading in report.layers:  # the recorded relative strength |k| / sqrt(d_model)
        assert reading.dose == pytest.approx(abs(record["k"]) / math.sqrt(64), rel=1e-6)
        assert reading.cosine_vector == pytest.approx(-1.0, abs=1e-6)  # k < 0: against c_l
    assert report.layers[0].cosine_previous is None and report.layers[1].cosine_previous is not None
    code, out, _ = _cli("audit", str(baked), "--base", str(llama_dir))
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith("steering found in out: blocks 1-3 (3 of 5), dose |v|/mu 0.09375")
    assert lines[0].endswith("(mu from its bakesteer.json)") and len(lines) == 5


def test_audit_of_a_foreign_checkpoint_measures_mu_on_the_shipped_prompts(
    baked: Path, llama_dir: Path, tmp_path: Path
) -> None:
    import math

    from bakesteer.audit import audit

    copy = _copy(baked, tmp_path)
    k = json.loads((copy / "bakesteer.json").read_text())["method"]["k"]
    for name in ("bakesteer.json", "steering.safetensors", "README.md", "mu.png"):
        (copy / name).unlink()  # steering without its record, as someone else might ship it
    report = audit(str(copy), base=str(llama_dir))
    assert report.band == (1, 4) and report.mu_from == "the shipped prompt sets through llama"
    # mu from the 139 + 139 shipped prompts instead of the bake's 12 + 12: the dose is |k|/sqrt(d) to within 25%
    for reading in report.layers:
        assert reading.dose == pytest.approx(abs(k) / math.sqrt(64), rel=0.25)


def test_the_card_says_how_to_verify_and_its_yaml_carries_the_claim(baked: Path, llama_dir: Path) -> None:
    import hashlib

    from huggingface_hub import ModelCard

    card = ModelCard.load(baked / "README.md")
    record = json.loads((baked / "bakesteer.json").read_text())
    data = card.data.to_dict()
    assert data["base_model_revision"] == record["base_model"]["revision"]
    assert data["bakesteer"] == {
        "k": -0.75,
        "band": [1, 4],
        "dose": record["method"]["relative_strength"],
        "bias_shard_sha256": hashlib.sha256((baked / BIAS).read_bytes()).hexdigest(),
    }
    assert "```bash\nbakesteer verify REPO_ID --base llama\n```" in card.text


def test_a_pushed_card_names_its_repository_in_the_verify_command(hub, baked: Path) -> None:
    from bakesteer.hub import push

    push(baked, "me/verify-card")
    _, files = hub.state.files("me/verify-card", "main")
    assert "bakesteer verify me/verify-card --base llama" in files["README.md"][1].decode()


def test_a_rewritten_shard_is_rebuilt_and_a_changed_bias_in_it_is_named(
    models_dir: Path, prompt_files, tmp_path: Path
) -> None:
    """GPT-2 carries its MLP output bias already: the offset is added to it, so its shard is rewritten, not linked."""
    from fixtures import FIXTURES

    source = FIXTURES["gpt2"](tmp_path / "gpt2")
    options = ConvertOptions(alpha=1.0, positive=prompt_files[0], negative=prompt_files[1], probes=2, greedy_tokens=4)
    out = convert(str(source), tmp_path / "out", options).output
    report = verify(out, base=str(source))
    assert report.ok and report.linked == []  # rebuilt from the base's shard, byte for byte
    with safe_open(str(out / "model.safetensors"), framework="pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        metadata = handle.metadata()
    tensors["transformer.h.3.mlp.c_proj.bias"][0] += 0.5
    save_file(tensors, str(out / "model.safetensors"), metadata=metadata)
    (line,) = _names(verify(out, base=str(source)))
    assert line == "model.safetensors:transformer.h.3.mlp.c_proj.bias: differs by up to 0.5 (layer 3)"
