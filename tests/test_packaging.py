"""The package works installed non-editable: prompt sets and typing marker ship in the wheel."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.packaging


def test_wheel_ships_data_and_runs_from_elsewhere(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            str(ROOT),
            "-w",
            str(tmp_path / "dist"),
        ],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    (wheel,) = (tmp_path / "dist").glob("bakesteer-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {
        "bakesteer/data/harmful.txt",
        "bakesteer/data/harmless.txt",
        "bakesteer/data/eval_prompts.txt",
        "bakesteer/data/reference_text.txt",
        "bakesteer/model_cards/bakesteer.md.j2",
        "bakesteer/py.typed",
        "bakesteer/templates/modeling_steered.py.tmpl",
    } <= names
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(tmp_path / "site"), str(wheel)],
        check=True,
        capture_output=True,
    )
    code = (
        "import bakesteer, bakesteer.prompts as p; "
        "print(bakesteer.__file__); print(len(p.load_prompt_set(None, 'positive').prompts)); "
        "print(len(p.load_prompt_set(None, 'eval').prompts)); print(len(p.reference_text().split())); "
        "import bakesteer.card as c; print(len(c.card_template()) > 1000)"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=tmp_path, env=env
    )
    location, count, eval_count, words, template = out.stdout.split()
    assert location.startswith(str(tmp_path / "site"))
    assert int(count) >= 128 and int(eval_count) == 64 and int(words) == 883 and template == "True"
