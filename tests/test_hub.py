"""Publishing with the real huggingface_hub client against a Hub-compatible server on 127.0.0.1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from hub_server import TOKEN

from bakesteer import ConvertOptions, convert
from bakesteer.cli import main


def fast(prompt_files, **kw) -> ConvertOptions:
    return ConvertOptions(positive=prompt_files[0], negative=prompt_files[1], **kw)


def _logits(directory: Path) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(directory).eval()
    with torch.no_grad():
        return model(torch.tensor([[1, 40, 41, 42, 43, 44]])).logits


def test_convert_push_download_reload(hub, llama_dir: Path, prompt_files, tmp_path: Path) -> None:
    from huggingface_hub import ModelCard, snapshot_download

    result = convert(str(llama_dir), tmp_path / "out", fast(prompt_files, push_to_hub="me/steered"))
    assert result.push.commit and "model.safetensors" in result.push.uploaded
    downloaded = Path(snapshot_download("me/steered", cache_dir=str(tmp_path / "dl")))
    assert sorted(p.name for p in downloaded.iterdir()) == sorted(p.name for p in result.output.iterdir())
    assert torch.equal(_logits(downloaded), _logits(result.output))
    card = ModelCard.load(downloaded / "README.md")
    assert card.data.library_name == "transformers" and "bakesteer" in card.data.tags
    # the pushed card's usage snippet names the repo; the local card keeps the placeholder
    assert 'AutoModelForCausalLM.from_pretrained("me/steered")' in card.text
    assert 'from_pretrained("REPO_ID")' in (result.output / "README.md").read_text()
    assert TOKEN not in (downloaded / "bakesteer.json").read_text() + card.text


def test_rerun_is_a_no_op_and_changes_commit(
    hub, llama_dir: Path, llama_sharded_dir: Path, prompt_files, tmp_path: Path
) -> None:
    from bakesteer.hub import push

    first = convert(str(llama_sharded_dir), tmp_path / "a", fast(prompt_files, alpha=1.0))
    assert push(first.output, "me/variants").commit
    commits = hub.state.commit_count
    again = push(first.output, "me/variants")
    assert again.commit is None and hub.state.commit_count == commits  # unchanged: no new commit
    assert "tokenizer.json" in again.unchanged

    changed = convert(str(llama_dir), tmp_path / "b", fast(prompt_files, alpha=2.0))
    result = push(changed.output, "me/variants")
    assert result.commit and hub.state.commit_count == commits + 1
    assert "tokenizer.json" in result.unchanged  # the same tokenizer is not uploaded again
    # the sharded push left shards and an index this single-file output lacks: they are deleted
    assert "model.safetensors.index.json" in result.deleted
    assert any(name.startswith("model-") for name in result.deleted)
    _, files = hub.state.files("me/variants", "main")
    assert set(files) == {p.name for p in changed.output.iterdir()}


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stderr


def test_hub_errors_are_one_line_and_keep_the_output(
    hub, llama_dir: Path, prompt_files, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = convert(str(llama_dir), tmp_path / "out", fast(prompt_files)).output
    before = sorted(p.name for p in out.iterdir())

    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    code, err = _cli("push", str(out), "me/x")
    assert code == 2 and err.count("\n") == 1 and "authentication failed" in err and "hf_wrong" not in err
    monkeypatch.setenv("HF_TOKEN", TOKEN)

    code, err = _cli("push", str(out), "forbidden/x")
    assert code == 2 and err.count("\n") == 1 and "may not write" in err

    assert sorted(p.name for p in out.iterdir()) == before  # the local output is intact

    code, err = _cli("push", str(out), "me/x")  # with a good token the same push completes
    assert code == 0, err
    _, files = hub.state.files("me/x", "main")
    assert set(files) == set(before)


def test_unvalidated_output_needs_force(hub, tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    code, err = _cli("push", str(tmp_path / "d"), "me/y")
    assert code == 2 and "not a bakesteer output" in err


def test_server_dies_mid_upload(
    hub, llama_dir: Path, prompt_files, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server crashes while receiving the weights: the client's retries meet a closed port, the push fails with
    one line, the converted output stays, and once the server is back the rerun completes."""
    import huggingface_hub.utils._http as http

    sleeps: list[float] = []  # the client's own backoff (1+2+4+8+8 s) runs, without the waiting
    monkeypatch.setattr(http, "time", type("T", (), {"sleep": staticmethod(sleeps.append)}))
    hub.state.crash_during_upload = True
    out = tmp_path / "out"
    args = ["convert", str(llama_dir), "-o", str(out), "--positive", str(prompt_files[0])]
    code, err = _cli(*args, "--negative", str(prompt_files[1]), "--push-to-hub", "me/crash")
    assert code == 2 and err.count("\n") == 1, err
    assert "push to me/crash failed: network error" in err and "the local output is unchanged" in err
    # every retry was spent against the dead server: 1+2+4+8+8 s of backoff (per upload thread that was running)
    assert not hub.alive and sorted(sleeps)[-2:] == [8, 8] and len(sleeps) >= 5
    assert json.loads((out / "bakesteer.json").read_text())["validation"]["passed"]  # the output is intact
    assert "me/crash" not in hub.state.repos or not hub.state.files("me/crash", "main")[1]  # nothing committed

    hub.restart()
    code, err = _cli("push", str(out), "me/crash")
    assert code == 0, err
    _, files = hub.state.files("me/crash", "main")
    expected = {p.name: p.read_bytes() for p in out.iterdir()}
    expected["README.md"] = expected["README.md"].replace(b'"REPO_ID"', b'"me/crash"')  # the card names its repo
    assert {name: data for name, (_, data) in files.items()} == expected


def test_missing_source_repo_and_branch(hub, prompt_files, tmp_path: Path) -> None:
    """A source model that is not on the Hub, or a missing revision: one line each, nothing written."""
    code, err = _cli("convert", "me/no-such-model", "-o", str(tmp_path / "o"))
    assert code == 2 and err.count("\n") == 1 and "me/no-such-model" in err and "no such repository" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("status", "error_code", "expected"),
    [
        (404, "RepoNotFound", "repository or branch not found"),
        (409, "", "conflict with the repository's state"),
        (412, "", "the branch moved during the push"),
        (503, "", "the Hub answered 503"),
    ],
)
def test_commit_refusals_are_one_line(
    hub, llama_dir: Path, prompt_files, tmp_path: Path, status: int, error_code: str, expected: str
) -> None:
    out = convert(str(llama_dir), tmp_path / "out", fast(prompt_files)).output
    hub.state.faults["commit"] = [(status, error_code)]  # the client does not retry a commit
    code, err = _cli("push", str(out), "me/refused")
    assert code == 2 and err.count("\n") == 1 and expected in err, err
    assert not hub.state.faults["commit"]
    code, err = _cli("push", str(out), "me/refused")  # the rerun completes
    assert code == 0, err


def test_concurrent_writer_gets_412_not_a_wrong_tree(hub, llama_dir: Path, prompt_files, tmp_path: Path) -> None:
    """Another commit lands between reading the tree and committing: the Hub refuses ours (parent commit), so a
    file the other writer added is neither deleted nor silently kept; the rerun sees it and deletes it."""
    from bakesteer.hub import push

    out = convert(str(llama_dir), tmp_path / "out", fast(prompt_files)).output
    push(out, "me/race")

    def other_writer(repo_id: str, branch: str) -> None:
        hub.state.before_commit = None
        with hub.state.lock:
            _, files = hub.state.files(repo_id, branch)
            hub.state.commit(repo_id, branch, {**files, "notes.md": ("git", b"hello")}, "other")

    hub.state.before_commit = other_writer
    (out / "extra.txt").write_text("a change, so that the push commits")
    code, err = _cli("push", str(out), "me/race")
    assert code == 2 and "the branch moved during the push" in err and "rerun the push" in err
    code, err = _cli("push", str(out), "me/race")
    assert code == 0, err
    _, files = hub.state.files("me/race", "main")
    assert "notes.md" not in files and "extra.txt" in files


def test_repo_deleted_during_the_push(hub, llama_dir: Path, prompt_files, tmp_path: Path) -> None:
    """The target repo disappears between its creation and the commit (deleted on the Hub): a 404, one line, the
    output intact; the rerun creates the repo again and completes."""
    out = convert(str(llama_dir), tmp_path / "out", fast(prompt_files)).output
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def delete_repo(repo_id: str, branch: str) -> None:
        hub.state.before_commit = None
        with hub.state.lock:
            del hub.state.repos[repo_id]

    hub.state.before_commit = delete_repo
    code, err = _cli("push", str(out), "me/gone")
    assert code == 2 and err.count("\n") == 1, err
    assert "push to me/gone failed: repository or branch not found; the local output is unchanged" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    code, err = _cli("push", str(out), "me/gone")
    assert code == 0, err
    assert set(hub.state.files("me/gone", "main")[1]) == set(before)
