"""Nothing of the user's is lost (issue 19, first part): the source is never an output, `demo -o` follows convert's
rule, `--report` is checked before any work, and killed or terminated runs leave nothing a rerun cannot clear."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner

from bakesteer.cli import main
from bakesteer.writer import AtomicDirectory, recover_interrupted


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def snapshot(directory: Path) -> dict[str, str]:
    """Every file under ``directory`` (relative path -> SHA-256)."""
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


@pytest.fixture()
def source(llama_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny Llama with a file of the user's in it."""
    copy = tmp_path / "model"
    shutil.copytree(llama_dir, copy)
    (copy / "my-notes.txt").write_text("mine\n")
    return copy


@pytest.mark.parametrize(
    ("output", "words"),
    [
        (".", "is the source model"),
        ("./sub/out", "lies inside the source model's directory"),
        ("..", "contains the source model"),
    ],
)
def test_the_source_is_never_an_output_even_with_overwrite(source: Path, prompt_files, output: str, words: str) -> None:
    before = snapshot(source.parent)
    target = str((source / output).resolve()) if output != "./sub/out" else str(source / "sub" / "out")
    code, _, err = run(
        "convert", str(source), "-o", target, "--overwrite", "--positive", str(prompt_files[0]),
        "--negative", str(prompt_files[1]),
    )  # fmt: skip
    assert code == 2, err
    assert err.count("\n") == 1 and words in err and "Traceback" not in err
    assert "choose an --output outside the model" in err
    assert snapshot(source.parent) == before  # byte-identical, nothing added (no staging, no sub/ directory)


def test_a_gguf_file_is_never_inside_an_overwritten_output(tmp_path: Path) -> None:
    folder = tmp_path / "ggufs"
    folder.mkdir()
    (folder / "model.gguf").write_bytes(b"GGUF not really")
    code, _, err = run("convert", str(folder / "model.gguf"), "-o", str(folder), "--overwrite")
    assert code == 2 and "contains the source model" in err
    assert (folder / "model.gguf").read_bytes() == b"GGUF not really"


def test_demo_refuses_an_existing_directory_without_overwrite(tmp_path: Path) -> None:
    existing = tmp_path / "mine"
    existing.mkdir()
    (existing / "thesis.tex").write_text("years of work\n")
    code, _, err = run("demo", "-o", str(existing))
    assert code == 2 and "already exists (a directory that is not empty)" in err and "--overwrite" in err
    assert snapshot(existing) == {"thesis.tex": hashlib.sha256(b"years of work\n").hexdigest()}


def test_report_into_a_missing_directory_is_refused_before_any_work(source: Path, tmp_path: Path) -> None:
    code, _, err = run("convert", str(source), "-o", str(tmp_path / "out"), "--report", str(tmp_path / "no" / "r.json"))
    assert code == 2 and "invalid --report" in err and "does not exist" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_a_killed_runs_leftovers_are_cleared_and_an_interrupted_commit_restored(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (tmp_path / ".out.bakesteer-0000aaaa.partial").mkdir()
    (tmp_path / ".out.bakesteer-0000aaaa.partial" / "model.safetensors").write_bytes(b"x")
    (tmp_path / ".out.bakesteer-0000aaaa.scratch").mkdir()
    old = tmp_path / ".out.bakesteer-0000bbbb.old"
    old.mkdir()
    (old / "config.json").write_text("{}")  # the previous output, moved aside when the commit was killed
    (tmp_path / "unrelated").mkdir()
    steps = recover_interrupted(out)
    assert steps == [
        "restored out from .out.bakesteer-0000bbbb.old, left by an interrupted run",
        "removed .out.bakesteer-0000aaaa.partial, left by an interrupted run",
        "removed .out.bakesteer-0000aaaa.scratch, left by an interrupted run",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "unrelated"]
    assert (out / "config.json").read_text() == "{}"
    # the restored output is protected like any other
    with pytest.raises(FileExistsError):
        AtomicDirectory(out)


def _convert_process(source: Path, out: Path, prompt_files) -> subprocess.Popen:
    args = ["convert", str(source), "-o", str(out), "--positive", str(prompt_files[0])]
    args += ["--negative", str(prompt_files[1]), "--quiet"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "bakesteer.cli", *args],
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


def _wait_for_validation(parent: Path, process: subprocess.Popen) -> Path:
    """Poll until the staging directory holds the written checkpoint (the last file written before validation)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        for staging in parent.glob(".out.bakesteer-*.partial"):
            if (staging / "tokenizer_config.json").exists():
                return staging
        time.sleep(0.02)
    raise AssertionError("the conversion never reached validation")


@pytest.mark.parametrize("stage", ["write...", "validate..."])
def test_sigkill_then_a_rerun_clears_the_debris_and_completes(stage: str, source: Path, prompt_files, tmp_path) -> None:
    out = tmp_path / "out"
    args = [
        "convert",
        str(source),
        "-o",
        str(out),
        "--positive",
        str(prompt_files[0]),
        "--negative",
        str(prompt_files[1]),
    ]
    run_ = _Watched(args)
    run_.wait_for(stage)
    run_.process.send_signal(signal.SIGKILL)
    run_.finish()
    left = sorted(p.name for p in tmp_path.iterdir() if p.name != "model")
    assert not out.exists() and left and all(name.startswith(".out.bakesteer-") for name in left), left

    rerun = _convert_process(source, out, prompt_files)
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    for name in left:
        assert f"removed {name}, left by an interrupted run" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "out"]
    assert (out / "bakesteer.json").is_file()


def test_sigterm_during_validation_cleans_up_like_ctrl_c(source: Path, prompt_files, tmp_path: Path) -> None:
    before = snapshot(source)
    out = tmp_path / "out"
    process = _convert_process(source, out, prompt_files)
    _wait_for_validation(tmp_path, process)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    assert err.strip().splitlines()[-1] == "bakesteer: terminated (SIGTERM); nothing was written"
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no staging, no scratch, no output
    assert snapshot(source) == before


@contextmanager
def tmpfs(mount: Path, options: str) -> Iterator[Path]:
    """A tmpfs the test mounts at ``mount`` (root only; skipped with the reason elsewhere)."""
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


@pytest.fixture()
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 400 KiB filesystem: too small for the tiny model's weights (about 0.9 MiB)."""
    with tmpfs(tmp_path / "small", "size=400k") as mount:
        yield mount


def test_a_full_disk_is_found_before_calibrating(source: Path, small_fs: Path, prompt_files, tmp_path) -> None:
    """The source is on another filesystem, so the output is a full rewrite: refused before any work."""
    args = ["--positive", str(prompt_files[0]), "--negative", str(prompt_files[1])]
    code, _, err = run("convert", str(source), "-o", str(small_fs / "out"), *args)
    assert code == 2, err
    assert err.count("\n") == 1 and f"not enough space in {small_fs}" in err and "free some space" in err
    assert list(small_fs.iterdir()) == []

    # a rerun onto a roomier filesystem completes
    code, _, err = run("convert", str(source), "-o", str(tmp_path / "roomy"), *args)
    assert code == 0, err


def test_enospc_while_writing_is_named_and_the_previous_output_survives(
    source: Path, small_fs: Path, prompt_files, monkeypatch
) -> None:
    """With the estimate bypassed, the real write runs out of space: one named error, the staging and scratch
    directories are gone, and the output that was there (replaced only on success) is untouched."""
    from bakesteer import ConvertOptions, convert
    from bakesteer.errors import DiskSpaceError

    previous = small_fs / "out"
    previous.mkdir()
    (previous / "config.json").write_text('{"previous": true}\n')
    monkeypatch.setattr("bakesteer.pipeline.require_space", lambda output, needed: None)
    options = ConvertOptions(positive=prompt_files[0], negative=prompt_files[1], overwrite=True)
    with pytest.raises(DiskSpaceError) as err:
        convert(str(source), previous, options)
    assert err.value.directory == str(small_fs) and err.value.needed > 400 * 1024
    assert sorted(p.name for p in small_fs.iterdir()) == ["out"]
    assert snapshot(previous) == {"config.json": hashlib.sha256(b'{"previous": true}\n').hexdigest()}


def test_a_read_only_output_filesystem_is_refused_up_front(source: Path, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "ro", "ro,size=64k") as mount:
        code, _, err = run("convert", str(source), "-o", str(mount / "out"))
    assert code == 2 and f"cannot write {mount / 'out'}: {mount} is on a read-only filesystem" in err


class _Watched:
    """A ``bakesteer --debug`` subprocess whose stderr is read line by line in a thread (stage lines: "calibrate...",
    "validate...", "push...")."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        import threading

        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bakesteer.cli", *args, "--debug"],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
        )
        self.reader = threading.Thread(target=lambda: self.lines.extend(iter(self.process.stderr.readline, "")))
        self.reader.start()

    def wait_for(self, text: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            assert self.process.poll() is None, "".join(self.lines[-20:])
            assert time.monotonic() < deadline, f"never saw {text!r}"
            time.sleep(0.01)

    def finish(self, timeout: float = 120) -> tuple[int, list[str]]:
        code = self.process.wait(timeout=timeout)
        self.reader.join(timeout=10)
        lines = [line.rstrip("\n") for line in self.lines]
        # --debug logs may follow the last word (clients closing at exit): keep bakesteer's own lines last
        return code, [line for line in lines if not line.startswith("bakesteer: ")] + [
            line for line in lines if line.startswith("bakesteer: ")
        ]


@pytest.mark.parametrize("stage", ["calibrate...", "validate..."])
def test_sigint_at_a_stage_leaves_nothing(stage: str, source: Path, prompt_files, tmp_path: Path) -> None:
    before = snapshot(source)
    run_ = _Watched(["convert", str(source), "-o", str(tmp_path / "out"), "--positive", str(prompt_files[0]),
                     "--negative", str(prompt_files[1])])  # fmt: skip
    run_.wait_for(stage)
    run_.process.send_signal(signal.SIGINT)
    code, lines = run_.finish()
    assert code == 130, lines[-5:]
    assert lines[-1] == "bakesteer: interrupted; nothing was written"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert snapshot(source) == before


def test_sigint_during_the_push_keeps_the_output_and_the_repo_unchanged(source: Path, prompt_files, tmp_path) -> None:
    """The output is committed locally before the push; an interrupt while the Hub commit is in flight leaves it
    complete and says how to finish the push, and the repository holds no part of it."""
    import threading

    from hub_server import TOKEN, HubServer

    arrived, release = threading.Event(), threading.Event()

    def hold(repo_id: str, rev: str) -> None:
        arrived.set()
        release.wait(60)
        raise ConnectionAbortedError("the client went away")  # the commit is never applied

    with HubServer() as server:
        server.state.before_commit = hold
        env = {"HF_ENDPOINT": server.endpoint, "HF_HUB_DISABLE_XET": "1", "HF_TOKEN": TOKEN, "HF_HUB_OFFLINE": "0"}
        out = tmp_path / "out"
        run_ = _Watched(["convert", str(source), "-o", str(out), "--positive", str(prompt_files[0]),
                         "--negative", str(prompt_files[1]), "--push-to-hub", "me/steered"], env)  # fmt: skip
        while not arrived.wait(0.1):
            assert run_.process.poll() is None, "".join(run_.lines[-20:])
        run_.process.send_signal(signal.SIGINT)
        code, lines = run_.finish()
        release.set()
        repo = server.state.repos.get("me/steered")
        committed = {name for commit in (repo.commits.values() if repo else ()) for name in commit}
    assert code == 130, lines[-5:]
    assert lines[-1].startswith(f"bakesteer: interrupted; the output in {out} is complete and validated")
    assert f"`bakesteer push {out} me/steered` completes it" in lines[-1]
    assert (out / "bakesteer.json").is_file() and (out / "model-steering-biases.safetensors").is_file()
    assert "bakesteer.json" not in committed


def test_an_interrupted_publish_keeps_every_finished_variant_in_its_report(llama_dir: Path, prompt_files, tmp_path):
    """Two variants; the second's Hub commit is held and the run interrupted: the report on disk already lists the
    first as published."""
    import threading

    from hub_server import TOKEN, HubServer

    variants = tmp_path / "variants.toml"
    pos, neg = prompt_files
    variants.write_text(
        f'[[prompt_sets]]\nname = "r"\npositive = "{pos}"\nnegative = "{neg}"\n'
        f'[[models]]\nmodel = "{llama_dir}"\nalphas = [1, 2]\nrepo = "me/tiny-k{{alpha}}"\n'
    )
    commits, arrived, release = [], threading.Event(), threading.Event()

    def hold_second(repo_id: str, rev: str) -> None:
        commits.append(repo_id)
        if len([r for r in commits if r.startswith("me/tiny")]) >= 2 and repo_id != commits[0]:
            arrived.set()
            release.wait(60)
            raise ConnectionAbortedError("the client went away")

    report = tmp_path / "report.json"
    with HubServer() as server:
        server.state.before_commit = hold_second
        env = {"HF_ENDPOINT": server.endpoint, "HF_HUB_DISABLE_XET": "1", "HF_TOKEN": TOKEN, "HF_HUB_OFFLINE": "0"}
        run_ = _Watched(["publish", str(variants), "--report", str(report), "--work-dir", str(tmp_path)], env)
        while not arrived.wait(0.1):
            assert run_.process.poll() is None, "".join(run_.lines[-20:])
        run_.process.send_signal(signal.SIGINT)
        code, lines = run_.finish()
        release.set()
    import json

    assert code == 130, lines[-5:]
    assert lines[-1] == f"bakesteer: interrupted; 1 variant(s) had finished; they are recorded in {report}"
    recorded = json.loads(report.read_text())
    assert [v["status"] for v in recorded["variants"]] == ["published"]
