"""Publishing with the real huggingface_hub client against a Hub-compatible server on 127.0.0.1."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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
    assert result.push.commit and "model-steering-biases.safetensors" in result.push.uploaded
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
    # the sharded push left shards this output (one linked source file and the biases) lacks: they are deleted
    assert "model-00001-of-00018.safetensors" in result.deleted and "model-base.safetensors" not in result.deleted
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
    assert "push to me/crash failed: network error reaching http://127.0.0.1:" in err
    assert "the local output is unchanged" in err
    # every retry was spent against the dead server: 1+2+4+8+8 s of backoff (per upload thread that was running)
    assert not hub.alive and sorted(sleeps)[-2:] == [8, 8] and len(sleeps) >= 5
    assert json.loads((out / "bakesteer.json").read_text())["validation"]["passed"]  # the output is intact
    assert "me/crash" not in hub.state.repos or not hub.state.files("me/crash", "main")[1]  # nothing committed

    hub.restart()
    code, err = _cli("push", str(out), "me/crash")
    assert code == 0, err
    _, files = hub.state.files("me/crash", "main")
    expected = {p.name: p.read_bytes() for p in out.iterdir()}
    card = expected["README.md"].replace(b'"REPO_ID"', b'"me/crash"')  # the card names its repo, twice
    expected["README.md"] = card.replace(b"bakesteer verify REPO_ID", b"bakesteer verify me/crash")
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
    """Another commit lands between reading the tree and committing: the Hub refuses ours (parent commit), so the
    push never commits a tree it did not read; the rerun sees the other writer's file and keeps it (bakesteer did
    not write it)."""
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
    assert files["notes.md"][1] == b"hello" and "extra.txt" in files


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


def _pushes(hub) -> list[tuple[str, str]]:
    """Requests that write: uploads, preuploads and commits."""
    return [r for r in hub.state.requests if r[0] == "PUT" or "/commit/" in r[1] or "/preupload/" in r[1]]


def test_push_keeps_files_bakesteer_did_not_write(hub, llama_dir: Path, prompt_files, tmp_path: Path) -> None:
    """A repo that holds someone's own files: refused without --force; with it the output goes in beside them, and
    no later push deletes them. Only files an earlier bakesteer output listed are ever deleted."""
    from hub_server import Repo

    with hub.state.lock:
        hub.state.repos["me/notes"] = Repo()
        hub.state.commit("me/notes", "main", {"notes.md": ("git", b"mine"), "data/plan.txt": ("git", b"x")}, "init")
    first = convert(str(llama_dir), tmp_path / "a", fast(prompt_files, alpha=1.0)).output
    before = len(_pushes(hub))
    code, err = _cli("push", str(first), "me/notes")
    assert code == 2 and err.count("\n") == 1, err
    assert "me/notes@main holds files bakesteer did not write (e.g. data/plan.txt) and no bakesteer.json" in err
    assert "pass --force to add the output beside them (nothing of theirs is deleted)" in err
    assert len(_pushes(hub)) == before  # refused before anything was uploaded
    code, err = _cli("push", str(first), "me/notes", "--force")
    assert code == 0, err
    _, files = hub.state.files("me/notes", "main")
    assert files["notes.md"][1] == b"mine" and files["data/plan.txt"][1] == b"x" and "model-base.safetensors" in files
    recorded = json.loads(files["bakesteer.json"][1])["files"]
    assert "model-base.safetensors" in recorded and "notes.md" not in recorded

    # a later output that lacks one of the first's files: that file goes, the owner's stay
    second = convert(str(llama_dir), tmp_path / "b", fast(prompt_files, alpha=2.0)).output
    (second / "mu.png").unlink()
    meta = json.loads((second / "bakesteer.json").read_text())
    meta["files"].remove("mu.png")
    (second / "bakesteer.json").write_text(json.dumps(meta))
    code, err = _cli("push", str(second), "me/notes")
    assert code == 0, err
    _, files = hub.state.files("me/notes", "main")
    assert "mu.png" not in files and files["notes.md"][1] == b"mine" and "data/plan.txt" in files


def test_convert_push_checks_the_fingerprint_before_converting(
    hub, llama_dir: Path, prompt_files, tmp_path: Path
) -> None:
    """Two identical conversions are byte-identical, so a second `convert --push-to-hub` converts and writes
    nothing; --force-push converts again and the push finds every file unchanged (no commit)."""
    args = ["convert", str(llama_dir), "--positive", str(prompt_files[0]), "--negative", str(prompt_files[1])]
    code, err = _cli(*args, "-o", str(tmp_path / "a"), "--push-to-hub", "me/again")
    assert code == 0, err
    commits, writes = hub.state.commit_count, len(_pushes(hub))
    result = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "b"), "--push-to-hub", "me/again"])
    assert result.exit_code == 0, result.stderr
    assert "me/again@main already holds this conversion" in result.stdout and "nothing converted or pushed" in (
        result.stdout
    )
    assert not (tmp_path / "b").exists() and hub.state.commit_count == commits and len(_pushes(hub)) == writes
    result = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "c"), "--push-to-hub", "me/again", "--force-push"])
    assert result.exit_code == 0, result.stderr
    assert "is up to date" in result.stdout and hub.state.commit_count == commits  # same bytes: nothing to commit
    a, c = tmp_path / "a", tmp_path / "c"
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in c.iterdir())
    for p in a.iterdir():
        assert p.read_bytes() == (c / p.name).read_bytes(), p.name


class SilentServer:
    """Accepts TCP connections on 127.0.0.1 and never answers (a stalled proxy); closes everything on exit."""

    def __enter__(self) -> SilentServer:
        import socket
        import threading

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self.endpoint = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.connections: list[Any] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()
        return self

    def _accept(self) -> None:
        import time

        deadline = time.monotonic() + 120  # bounded: after that every connection is closed, whatever the test does
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                conn, _ = self.sock.accept()
                self.connections.append(conn)
            except OSError:
                continue
        for conn in self.connections:
            conn.close()
        self.sock.close()

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join()


def _closed_port_endpoint() -> str:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.parametrize("kind", ["unreachable", "silent"])
def test_unreachable_or_silent_hub_is_one_line_before_converting(
    kind: str, llama_dir: Path, prompt_files, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import contextlib
    import time

    from conftest import use_endpoint

    from bakesteer import pipeline

    calibrations: list[int] = []
    monkeypatch.setattr(pipeline, "calibrate", lambda *a, **k: calibrations.append(1))
    monkeypatch.setenv("BAKESTEER_HUB_TIMEOUT", "2")
    variants = tmp_path / "variants.toml"
    variants.write_text(f'[[models]]\nmodel = "{llama_dir}"\nalphas = [1, 2]\nrepo = "me/x-{{alpha}}"\n')
    with SilentServer() if kind == "silent" else contextlib.nullcontext() as server:
        endpoint = server.endpoint if server is not None else _closed_port_endpoint()
        use_endpoint(monkeypatch, endpoint, tmp_path / "cache")
        for args in (
            ["convert", str(llama_dir), "-o", str(tmp_path / "out"), "--push-to-hub", "me/x"],
            ["publish", str(variants)],
            ["publish", str(variants), "--dry-run"],
        ):
            started = time.monotonic()
            code, err = _cli(*args)
            elapsed = time.monotonic() - started
            assert code == 2 and err.count("\n") == 1, (args, err)
            assert f"network error reaching {endpoint}" in err and "raise BAKESTEER_HUB_TIMEOUT (now 2 s)" in err
            assert "Traceback" not in err and elapsed < 30, (args, elapsed)  # it would hang without a timeout
    assert not calibrations and not (tmp_path / "out").exists()
