"""Benchmark prompt sets: Hub datasets through the loopback Hub (read with the real huggingface_hub client and
``datasets``, pinned to a commit, also offline from the cache) and local parquet files; each malformed input is one
clear error."""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from hub_server import HubServer

from bakesteer.cli import main
from bakesteer.errors import PromptSetError
from bakesteer.prompt_sources import parse_spec
from bakesteer.prompts import load_prompt_set, pinned_hash

ROWS = [f"Explain step {i} of making a paper boat." for i in range(12)]


def parquet(columns: dict[str, list]) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.table(columns), buffer)
    return buffer.getvalue()


def bench(hub: HubServer) -> str:
    """A HarmBench-like layout: one directory per config, a train split in each."""
    return hub.state.add_dataset(
        "org/bench",
        {
            "standard/train-00000-of-00001.parquet": parquet({"prompt": ROWS, "category": ["a"] * 12}),
            "contextual/train-00000-of-00001.parquet": parquet({"prompt": ROWS[:9], "context": ["c"] * 9}),
            "README.md": b"---\nlicense: mit\n---\n",
        },
    )


def test_spec_grammar() -> None:
    spec = parse_spec("hf://datasets/walledai/HarmBench@refs%2Fconvert%2Fparquet:standard/train#prompt")
    assert (spec.repo, spec.revision, spec.config, spec.split, spec.column) == (
        "walledai/HarmBench",
        "refs/convert/parquet",
        "standard",
        "train",
        "prompt",
    )
    spec = parse_spec("hf://datasets/mlabonne/harmful_behaviors/test#text")
    assert (spec.revision, spec.config, spec.split, spec.column) == (None, None, "test", "text")
    for bad in ("hf://datasets/justone", "hf://datasets/a/b/c/d", "hf://datasets/"):
        with pytest.raises(PromptSetError, match="not a Hub dataset name") as err:
            parse_spec(bad)
        assert err.value.hint.startswith("write hf://datasets/OWNER/NAME[@REVISION][:CONFIG][/SPLIT]#COLUMN")


def test_hub_dataset_is_read_and_pinned_to_its_commit(hub: HubServer, tmp_path: Path) -> None:
    commit = bench(hub)
    prompts = load_prompt_set("hf://datasets/org/bench:standard/train#prompt", "positive")
    assert prompts.prompts == tuple(ROWS)
    assert prompts.name == f"hf://datasets/org/bench@{commit}:standard/train#prompt" and prompts.pin == commit
    described = prompts.describe()
    assert described["source"] == {
        "repo": "org/bench",
        "revision": commit,
        "config": "standard",
        "split": "train",
        "column": "prompt",
    }
    assert pinned_hash(described) == f"{prompts.sha256}@{commit}"  # what the fingerprint reads
    # the only data file of a config is found without naming the split; the column defaults to "prompt"
    assert load_prompt_set("hf://datasets/org/bench:contextual", "positive").prompts == tuple(ROWS[:9])
    # the branch moves: the same name now pins another commit, with the same prompts but another fingerprint hash
    moved = hub.state.add_dataset("org/bench", {"standard/train-00000-of-00001.parquet": parquet({"prompt": ROWS})})
    again = load_prompt_set("hf://datasets/org/bench:standard/train#prompt", "positive")
    assert again.pin == moved != commit and pinned_hash(again.describe()) != pinned_hash(described)
    # an old commit is still readable by its hash
    assert load_prompt_set(f"hf://datasets/org/bench@{commit}:contextual/train", "positive").pin == commit


def test_hub_dataset_offline_reads_the_cached_commit(hub: HubServer, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as c

    commit = bench(hub)
    online = load_prompt_set("hf://datasets/org/bench:standard/train#prompt", "positive")
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    served = len(hub.state.requests)
    offline = load_prompt_set("hf://datasets/org/bench:standard/train#prompt", "positive")
    assert offline.prompts == online.prompts and offline.pin == commit and len(hub.state.requests) == served
    with pytest.raises(PromptSetError, match="not in the local cache and HF_HUB_OFFLINE=1"):
        load_prompt_set("hf://datasets/org/other:x/train#prompt", "positive")


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("hf://datasets/org/bench/train#prompt", "has several configs (contextual, standard)"),
        ("hf://datasets/org/bench:nope/train#prompt", "has no config 'nope' (it has contextual, standard)"),
        ("hf://datasets/org/bench:standard/test#prompt", "has no split 'test' (it has train)"),
        ("hf://datasets/org/bench:standard/train#question", "has no column 'question' (it has ['prompt', 'category'])"),
        ("hf://datasets/org/missing:standard/train#prompt", "no such dataset on the Hub"),
        ("hf://datasets/org/bench@v9:standard/train#prompt", "no revision 'v9'"),
        ("hf://datasets/org/empty/train#prompt", "is empty"),
        ("hf://datasets/org/numbers/train#n", "column 'n' holds int, not text (row 0)"),
        ("hf://datasets/org/csv/train#prompt", "has no parquet files at that revision"),
    ],
)
def test_a_hub_dataset_that_cannot_serve_is_one_error(hub: HubServer, spec: str, reason: str) -> None:
    bench(hub)
    hub.state.add_dataset(
        "org/empty", {"data/train-00000-of-00001.parquet": parquet({"prompt": pa.array([], pa.string())})}
    )
    hub.state.add_dataset("org/numbers", {"data/train-00000-of-00001.parquet": parquet({"n": list(range(9))})})
    hub.state.add_dataset("org/csv", {"data/train.csv": b"prompt\na\n"})
    with pytest.raises(PromptSetError) as err:
        load_prompt_set(spec, "positive")
    assert str(err.value) == f"prompt set {spec}: {reason}"


def test_local_parquet_files(tmp_path: Path) -> None:
    (tmp_path / "set.parquet").write_bytes(parquet({"instruction": ROWS, "id": list(range(12))}))
    (tmp_path / "two.parquet").write_bytes(parquet({"a": ROWS, "b": ROWS}))
    assert load_prompt_set(tmp_path / "set.parquet", "positive").prompts == tuple(ROWS)  # a known column name
    named = load_prompt_set(Path(f"{tmp_path}/two.parquet#b"), "positive")
    assert named.prompts == tuple(ROWS) and named.name == "two.parquet#b"
    with pytest.raises(PromptSetError) as err:
        load_prompt_set(tmp_path / "two.parquet", "positive")
    assert (
        err.value.one_line()
        == "prompt set two.parquet: no prompt column among ['a', 'b']; name it with #COLUMN at the end"
    )
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(PromptSetError, match=r"broken\.parquet: is not a readable parquet file"):
        load_prompt_set(tmp_path / "broken.parquet", "positive")
    with pytest.raises(PromptSetError, match=r"gone\.parquet: file not found"):
        load_prompt_set(tmp_path / "gone.parquet", "positive")


def test_cli_takes_a_hub_dataset_and_records_its_commit(
    hub: HubServer, llama_dir: Path, prompt_files: tuple[Path, Path], tmp_path: Path
) -> None:
    commit = bench(hub)
    out = tmp_path / "vector.safetensors"
    args = ["vector", str(llama_dir), "-o", str(out), "--negative", str(prompt_files[1])]
    result = CliRunner().invoke(main, [*args, "--positive", "hf://datasets/org/bench:standard/train#prompt"])
    assert result.exit_code == 0, result.output
    from bakesteer.vector import SteeringVector

    info = SteeringVector.load(out).info
    assert info["positive"]["source"]["revision"] == commit
    assert info["positive"]["name"] == f"hf://datasets/org/bench@{commit}:standard/train#prompt"
    bad = CliRunner().invoke(main, [*args, "--overwrite", "--positive", "hf://datasets/org/bench:nope/train"])
    assert bad.exit_code == 2 and bad.output.count("\n") == 1 and "has no config 'nope'" in bad.output
