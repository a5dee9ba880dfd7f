"""``bakesteer publish``: a variants file to Hub repos, with the real huggingface_hub client against the loopback
Hub. One calibration per model, fingerprints checked before converting, partial failures, dry runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from fixtures import FIXTURES
from hub_server import TOKEN, HubServer
from safetensors.torch import load_file

from bakesteer import ConvertOptions, convert, pipeline
from bakesteer.cli import EXIT_SOME_FAILED, main
from bakesteer.errors import VariantsFileError
from bakesteer.publish import load_variants

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return FIXTURES["qwen3"](tmp_path_factory.mktemp("publish") / "qwen3")


def _cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


class Spy:
    """Counts calls to a real function and runs it."""

    def __init__(self, function: Any) -> None:
        self.function, self.calls = function, 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.function(*args, **kwargs)


@pytest.fixture()
def spies(monkeypatch: pytest.MonkeyPatch) -> dict[str, Spy]:
    out = {"calibrate": Spy(pipeline.calibrate), "convert": Spy(pipeline.convert)}
    for name, spy in out.items():
        monkeypatch.setattr(pipeline, name, spy)
    return out


def _variants(tmp_path: Path, models: list[tuple[Any, ...]], alphas: str, prompt_files, extra: str = "") -> Path:
    """A variants file: one ``[[models]]`` entry per ``(model, repo[, branch])``."""
    (tmp_path / "prompts").mkdir(exist_ok=True)
    for src in prompt_files:
        (tmp_path / "prompts" / src.name).write_bytes(src.read_bytes())
    text = (
        "[defaults]\nprobes = 4\ngreedy_tokens = 4\n" + extra + "\n"
        '[[prompt_sets]]\nname = "refusal"\npositive = "prompts/harmful.txt"\nnegative = "prompts/harmless.txt"\n'
    )
    for model, repo, *branch in models:
        text += f'\n[[models]]\nmodel = "{model}"\nalphas = {alphas}\nrepo = "{repo}"\n'
        text += f'branch = "{branch[0]}"\n' if branch else ""
    path = tmp_path / "variants.toml"
    path.write_text(text)
    return path


def _pushes(hub: HubServer) -> list[tuple[str, str]]:
    return [r for r in hub.state.requests if r[0] == "PUT" or "/commit/" in r[1] or "/preupload/" in r[1]]


def test_two_models_three_alphas_calibrate_once_each_and_rerun_skips(
    hub: HubServer, llama_dir: Path, qwen3_dir: Path, prompt_files, tmp_path: Path, spies: dict[str, Spy]
) -> None:
    models = [(llama_dir, "me/{model}-k{alpha}"), (qwen3_dir, "me/{model}-{prompt_set}", "k{alpha}")]
    variants = _variants(tmp_path, models, "[-1, 0.5, 1]", prompt_files)
    report = tmp_path / "report.json"

    code, out, err = _cli("publish", str(variants), "--report", str(report))
    assert code == 0, err
    assert spies["calibrate"].calls == 2  # one calibration per model, shared by its three alphas
    assert spies["convert"].calls == 6 and hub.state.commit_count == 6
    data = json.loads(report.read_text())
    assert data["calibrations"] == 2 and data["counts"] == {"published": 6}
    assert [(v["model"], v["alpha"], v["repo"], v["branch"], v["reason"]) for v in data["variants"]] == [
        ("llama", -1.0, "me/llama-k-1", "main", "new repository"),
        ("llama", 0.5, "me/llama-k0.5", "main", "new repository"),
        ("llama", 1.0, "me/llama-k1", "main", "new repository"),
        ("qwen3", -1.0, "me/qwen3-refusal", "k-1", "new repository"),
        ("qwen3", 0.5, "me/qwen3-refusal", "k0.5", "new repository"),  # (planned before the first push)
        ("qwen3", 1.0, "me/qwen3-refusal", "k1", "new repository"),
    ]
    assert set(hub.state.repos["me/qwen3-refusal"].branches) == {"main", "k-1", "k0.5", "k1"}
    for v in data["variants"]:
        _, files = hub.state.files(v["repo"], v["branch"])
        meta = json.loads(files["bakesteer.json"][1])
        assert meta["fingerprint"] == v["fingerprint"] and meta["method"]["vector_reused"] is True
        assert meta["method"]["k"] == v["alpha"] and meta["validation"]["passed"]
        assert (
            v["source"]["revision"].startswith("sha256:")
            and v["commit"] == hub.state.repos[v["repo"]].branches[v["branch"]]
        )
    assert "published" in out and "6 variants: 6 published; 2 calibration(s)" in out
    assert TOKEN not in report.read_text() + out + err and str(tmp_path) not in report.read_text()

    # the reused vector writes exactly what a direct conversion (with its own calibration) writes
    direct = convert(
        str(llama_dir),
        tmp_path / "direct",
        ConvertOptions(positive=prompt_files[0], negative=prompt_files[1], alpha=0.5, probes=4, greedy_tokens=4),
    )
    _, files = hub.state.files("me/llama-k0.5", "main")
    (tmp_path / "pushed.safetensors").write_bytes(files["model-steering-biases.safetensors"][1])
    pushed = load_file(tmp_path / "pushed.safetensors")
    local = load_file(direct.output / "model-steering-biases.safetensors")
    assert pushed.keys() == local.keys() and all(torch.equal(pushed[k], local[k]) for k in local)
    assert direct.metadata["fingerprint"] == data["variants"][1]["fingerprint"]

    # second run: every fingerprint is already published, nothing is loaded, converted or uploaded
    spies["calibrate"].calls = spies["convert"].calls = 0
    before = len(_pushes(hub))
    code, out, err = _cli("publish", str(variants), "--report", str(report))
    assert code == 0, err
    assert spies["calibrate"].calls == 0 and spies["convert"].calls == 0
    assert hub.state.commit_count == 6 and len(_pushes(hub)) == before
    assert json.loads(report.read_text())["counts"] == {"up-to-date": 6}
    assert "6 variants: 6 up-to-date; 0 calibration(s)" in out

    # one alpha changes in each model: only those two variants are converted, after one calibration per model
    variants.write_text(variants.read_text().replace("alphas = [-1, 0.5, 1]", "alphas = [-1, 0.5, 2]"))
    code, out, err = _cli("publish", str(variants), "--report", str(report))
    assert code == 0, err
    data = json.loads(report.read_text())
    assert data["counts"] == {"published": 2, "up-to-date": 4} and data["calibrations"] == 2
    published = [(v["repo"], v["branch"], v["reason"]) for v in data["variants"] if v["status"] == "published"]
    assert published == [("me/llama-k2", "main", "new repository"), ("me/qwen3-refusal", "k2", "new branch")]
    assert spies["calibrate"].calls == 2 and spies["convert"].calls == 2 and hub.state.commit_count == 8


def test_dry_run_then_partial_failure(
    hub: HubServer, llama_dir: Path, prompt_files, tmp_path: Path, spies: dict[str, Spy]
) -> None:
    """A forbidden target and a missing source fail alone; the good variant still publishes; exit status 4."""
    models = [(llama_dir, "me/good-k{alpha}"), (llama_dir, "forbidden/bad-k{alpha}"), ("me/no-such-model", "me/x")]
    variants = _variants(tmp_path, models, "[1]", prompt_files)
    report = tmp_path / "report.json"

    code, out, err = _cli("publish", str(variants), "--dry-run", "--report", str(report))
    assert code == EXIT_SOME_FAILED
    assert "would-publish me/good-k1@main  k=1 refusal (llama): new repository" in out and "me/x@main" in err
    assert spies["calibrate"].calls == 0 and hub.state.commit_count == 0 and not _pushes(hub)
    data = json.loads(report.read_text())
    assert data["dry_run"] and [v["status"] for v in data["variants"]] == ["would-publish", "would-publish", "failed"]
    assert data["variants"][0]["reason"] == "new repository"
    assert "no such repository" in data["variants"][2]["error"]

    code, _, err = _cli("publish", str(variants), "--report", str(report))
    assert code == EXIT_SOME_FAILED
    data = json.loads(report.read_text())
    assert [v["status"] for v in data["variants"]] == ["published", "failed", "failed"]
    assert data["calibrations"] == 1 and spies["calibrate"].calls == 1  # the same model in two entries: one vector
    assert "may not write" in data["variants"][1]["error"]
    assert set(hub.state.repos) == {"me/good-k1"}
    failed_lines = sorted(line for line in err.splitlines() if line.startswith("failed"))
    assert len(failed_lines) == 2 and "forbidden/bad-k1@main" in failed_lines[0] and "me/x@main" in failed_lines[1]
    assert "push to forbidden/bad-k1 failed: the token may not write to this repository; use a token" in err
    assert str(tmp_path) not in report.read_text()  # no local paths in the report
    assert not list(tmp_path.glob("**/bakesteer-publish-*"))  # scratch directories are gone


def test_bad_token_stops_before_converting(
    hub: HubServer,
    llama_dir: Path,
    prompt_files,
    tmp_path: Path,
    spies: dict[str, Spy],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    variants = _variants(tmp_path, [(llama_dir, "me/t-k{alpha}")], "[1]", prompt_files)
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    code, _, err = _cli("publish", str(variants))
    assert code == 2 and err.count("\n") == 1 and "authentication failed" in err and "hf_wrong" not in err
    assert spies["calibrate"].calls == 0


def test_hub_source_is_pinned_and_a_new_source_commit_republishes(
    hub: HubServer, llama_dir: Path, prompt_files, tmp_path: Path, spies: dict[str, Spy]
) -> None:
    from huggingface_hub import HfApi

    api = HfApi(token=TOKEN)
    api.create_repo("acme/base")
    first = api.upload_folder(repo_id="acme/base", folder_path=str(llama_dir)).oid
    variants = _variants(tmp_path, [("acme/base", "me/base-k{alpha}")], "[1]", prompt_files)
    report = tmp_path / "report.json"
    code, _, err = _cli("publish", str(variants), "--report", str(report), "--keep-outputs", str(tmp_path / "kept"))
    assert code == 0, err
    kept = json.loads((tmp_path / "kept" / "me--base-k1" / "bakesteer.json").read_text())
    variant = json.loads(report.read_text())["variants"][0]
    assert kept["fingerprint"] == variant["fingerprint"]
    assert variant["source"] == {"kind": "hub", "model_id": "acme/base", "revision": first}
    _, files = hub.state.files("me/base-k1", "main")
    card = files["README.md"][1].decode()
    assert f"--revision {first}" in card  # the card reproduces the exact commit
    assert "\nbase_model: acme/base\n" in card and 'from_pretrained("me/base-k1")' in card

    code, _, err = _cli("publish", str(variants), "--report", str(report))
    assert code == 0 and json.loads(report.read_text())["counts"] == {"up-to-date": 1}

    config = json.loads((llama_dir / "generation_config.json").read_text())
    api.upload_file(
        repo_id="acme/base",
        path_in_repo="generation_config.json",
        path_or_fileobj=json.dumps({**config, "temperature": 0.5}).encode(),
    )
    code, _, err = _cli("publish", str(variants), "--report", str(report))
    data = json.loads(report.read_text())
    assert code == 0 and data["counts"] == {"published": 1}
    assert data["variants"][0]["reason"] == "fingerprint changed"
    assert data["variants"][0]["source"]["revision"] != first


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[defaults]\nalpha = 1\n", "'alpha' is set by publish; use alphas instead"),
        ("[defaults]\nwidth = 1\n", "defaults: unknown key 'width'"),
        ("[defaults]\ndtype = 3\n", "defaults: dtype must be a str, not 3"),
        ("[defaults]\ndtype = 'float8'\n", "invalid --dtype 'float8': unknown dtype"),
        ("colour = 1\n", "unknown top-level key 'colour'"),
        ("[defaults\n", "cannot parse it"),
        ("", "no [[models]] entries"),
        ('[[models]]\nmodel = "a/b"\nalphas = []\nrepo = "me/x"\n', "alphas must be a non-empty list of numbers"),
        ('[[models]]\nmodel = "a/b"\nalphas = [1, 1.0]\nrepo = "me/x-{alpha}"\n', "alphas has a repeated value"),
        ('[[models]]\nmodel = "a/b"\nalphas = [1, 2]\nrepo = "me/x"\n', "both publish to me/x@main"),
        ('[[models]]\nmodel = "a/b"\nalphas = [1]\nrepo = "me/{size}"\n', "unknown placeholder"),
        ('[[models]]\nmodel = "a/b"\nalphas = [1]\nrepo = "no-owner"\n', "'no-owner' is not a valid OWNER/NAME"),
        ('[[models]]\nmodel = "a/b"\nalphas = [1]\nrepo = "me/x"\nprompt_sets = ["hon"]\n', "unknown prompt set"),
        ('[[models]]\nmodel = "a/b"\nalphas = [1]\nrepo = "me/x"\nlayers = "0.9:0.4"\n', "invalid --layers"),
        ('[[prompt_sets]]\nname = "x"\npositive = "nope.txt"\n', "positive file 'nope.txt' not found"),
        ('[[models]]\nmodel = "a/b"\nalphas = ["often"]\nrepo = "me/x"\n', 'list of numbers or "auto"'),
        ('[[models]]\nmodel = "a/b"\nalphas = ["auto", "AUTO"]\nrepo = "me/x{alpha}"\n', "repeated value"),
        ('[defaults]\neval_prompts = "nope.txt"\n', "defaults: eval_prompts file 'nope.txt' not found"),
        ("[defaults]\neval_prompts = 3\n", "defaults: eval_prompts must be a path string, not 3"),
        ('[defaults]\ndirection = "up"\n', "invalid --direction 'up': unknown side"),
    ],
)
def test_variants_file_errors_name_the_entry(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "v.toml"
    path.write_text(text)
    with pytest.raises(VariantsFileError) as info:
        load_variants(path)
    assert message in info.value.one_line() and info.value.one_line().startswith("variants file v.toml: ")
    assert "\n" not in info.value.one_line()


def test_variants_file_error_is_one_line_from_the_cli(tmp_path: Path) -> None:
    path = tmp_path / "v.yaml"
    path.write_text("models:\n  - model: a/b\n    alphas: [1]\n    repo: me/x\n    alpha: 2\n")
    code, _, err = _cli("publish", str(path))
    assert code == 2 and err.count("\n") == 1 and "'alpha' is set by publish" in err


def test_yaml_and_toml_give_the_same_variants(tmp_path: Path) -> None:
    (tmp_path / "v.toml").write_text(
        '[defaults]\ndtype = "float32"\n[[models]]\nmodel = "a/b"\nalphas = [1, -0.5]\nrepo = "me/b"\n'
        'branch = "k{alpha}"\nlayers = "2-3"\n'
    )
    (tmp_path / "v.yaml").write_text(
        "defaults: {dtype: float32}\nmodels:\n  - {model: a/b, alphas: [1, -0.5], repo: me/b, branch: 'k{alpha}', "
        "layers: '2-3'}\n"
    )
    toml, yaml = load_variants(tmp_path / "v.toml"), load_variants(tmp_path / "v.yaml")
    assert toml == yaml
    assert [(v.target, v.alpha, v.options.layers, v.options.dtype) for v in toml] == [
        ("me/b@k1", 1.0, "2-3", "float32"),
        ("me/b@k-0.5", -0.5, "2-3", "float32"),
    ]


def _workflow() -> dict[str, Any]:
    import yaml

    return yaml.safe_load((ROOT / ".github" / "workflows" / "publish-variants.yml").read_text())


def test_shipped_example_and_workflow_stay_valid() -> None:
    """What actionlint (``make lint``) cannot know: the workflow's shape matches how bakesteer is meant to be run."""
    variants = load_variants(ROOT / "examples" / "variants.toml")
    assert len(variants) == 6 and len({v.target for v in variants}) == 6
    assert len({v.group_id for v in variants}) == 2  # two calibrations: two publishing jobs
    workflow = _workflow()
    jobs = workflow["jobs"]
    assert list(jobs) == ["plan", "publish", "report"]
    assert jobs["publish"]["needs"] == "plan" and jobs["report"]["needs"] == ["plan", "publish"]
    assert jobs["publish"]["strategy"]["matrix"] == "${{ fromJSON(needs.plan.outputs.matrix) }}"
    assert jobs["publish"]["strategy"]["fail-fast"] is False
    steps = {name: job["steps"] for name, job in jobs.items()}
    plan_run = next(s["run"] for s in steps["plan"] if s.get("name") == "Plan (dry run)")
    assert "--plan-json" in plan_run and "--report plan.json" in plan_run
    publish_run = next(s["run"] for s in steps["publish"] if s.get("name") == "Publish")
    assert '--group "$GROUP"' in publish_run and jobs["publish"]["env"]["GROUP"] == "${{ matrix.id }}"
    # the token only where the Hub is read or written: never at the workflow or job level, never on an install step
    assert "HF_TOKEN" not in workflow.get("env", {}) and all("HF_TOKEN" not in j.get("env", {}) for j in jobs.values())
    with_token = [(job, s["name"]) for job, ss in steps.items() for s in ss if "HF_TOKEN" in s.get("env", {})]
    assert with_token == [("plan", "Plan (dry run)"), ("publish", "Publish")]
    # the default variants file exists; each job's cache holds one model, with no fallback key
    default = workflow[True]["workflow_dispatch"]["inputs"]["variants"]["default"]  # YAML 1.1 reads `on` as True
    assert (ROOT / default).is_file() and workflow["env"]["VARIANTS"].endswith(f"'{default}' }}}}")
    (cache,) = [s for ss in steps.values() for s in ss if str(s.get("uses", "")).startswith("actions/cache")]
    assert "restore-keys" not in cache["with"] and "matrix.cache_key" in cache["with"]["key"]
    installs = [s["run"] for ss in steps.values() for s in ss if s.get("name", "").startswith("Install bakesteer")]
    assert len(installs) == 2 and all("BAKESTEER_SPEC" in r and "pip install .\n" not in r for r in installs)


def test_offline_publish_is_one_line(llama_dir: Path, prompt_files, tmp_path: Path, spies: dict[str, Spy]) -> None:
    """Without the hub fixture the suite runs with HF_HUB_OFFLINE=1: even a dry run needs to read the targets."""
    variants = _variants(tmp_path, [(llama_dir, "me/o-k{alpha}")], "[1]", prompt_files)
    expected = "reaching the Hub failed: HF_HUB_OFFLINE is set; unset HF_HUB_OFFLINE to reach the Hub"
    for extra in ([], ["--dry-run"]):
        code, out, err = _cli("publish", str(variants), *extra)
        assert code == 2 and not out and err == f"bakesteer: error: {expected}\n"
    assert spies["calibrate"].calls == 0


def test_publish_alpha_auto_plans_its_fingerprint_and_measures_the_card(
    hub: HubServer, llama_dir: Path, prompt_files, tmp_path: Path, spies: dict[str, Spy]
) -> None:
    from importlib import resources

    eval_lines = resources.files("bakesteer.data").joinpath("eval_prompts.txt").read_text().splitlines()[:9]
    (tmp_path / "prompts").mkdir()
    eval_file = tmp_path / "prompts" / "eval.txt"
    eval_file.write_text("\n".join(eval_lines[:8]) + "\n")
    extra = 'max_new_tokens = 4\neval_prompts = "prompts/eval.txt"\neval = true\n'
    variants = _variants(tmp_path, [(llama_dir, "me/{model}-k{alpha}")], '["auto", 1]', prompt_files, extra)
    assert [v.alpha for v in load_variants(variants)] == ["auto", 1.0]
    report = tmp_path / "report.json"
    code, out, err = _cli("publish", str(variants), "--report", str(report))
    assert code == 0, err
    data = json.loads(report.read_text())
    assert data["counts"] == {"published": 2} and data["calibrations"] == 1 and spies["calibrate"].calls == 1
    assert [v["repo"] for v in data["variants"]] == ["me/llama-kauto", "me/llama-k1"]
    assert "k=auto refusal" in out
    for v in data["variants"]:
        _, files = hub.state.files(v["repo"], "main")
        meta = json.loads(files["bakesteer.json"][1])
        assert meta["fingerprint"] == v["fingerprint"]  # planned before converting, equal after
        assert "## Measured effect" in files["README.md"][1].decode()
    auto_meta = json.loads(hub.state.files("me/llama-kauto", "main")[1]["bakesteer.json"][1])
    assert auto_meta["options"]["alpha"] == "auto" and auto_meta["method"]["k"] == auto_meta["sweep"]["chosen"]
    assert auto_meta["evaluation"]["eval_set"]["prompts"] == 8

    code, out, err = _cli("publish", str(variants), "--report", str(report))
    assert code == 0 and json.loads(report.read_text())["counts"] == {"up-to-date": 2}

    # other eval prompts change what --alpha auto may choose: that variant is republished, the fixed k is not
    eval_file.write_text("\n".join(eval_lines[1:]) + "\n")
    code, out, err = _cli("publish", str(variants), "--report", str(report))
    assert code == 0, err
    statuses = [(v["repo"], v["status"], v["reason"]) for v in json.loads(report.read_text())["variants"]]
    assert statuses[0][0] == "me/llama-kauto" and statuses[0][2] == "fingerprint changed"
    assert statuses[0][1] in ("published", "unchanged") and statuses[1][1] == "up-to-date"


def _summary(tmp_path: Path, plan: dict[str, Any], jobs: list[dict[str, Any]], publish_result: str) -> tuple[int, str]:
    """Run the report job's inline Python on a plan and the publishing jobs' reports, as the workflow does."""
    import os
    import subprocess
    import sys

    (step,) = [s for s in _workflow()["jobs"]["report"]["steps"] if s.get("name") == "Summary"]
    script = step["run"].split("<<'PY'", 1)[1].split("\n", 1)[1].split("\nPY", 1)[0]
    folder = tmp_path / "reports"
    folder.mkdir(parents=True)
    (folder / "plan.json").write_text(json.dumps(plan))
    for i, job in enumerate(jobs):
        (folder / f"report-g{i}.json").write_text(json.dumps(job))
    env = {**os.environ, "PUBLISH_RESULT": publish_result}
    out = subprocess.run([sys.executable, "-c", script, str(folder)], capture_output=True, text=True, env=env)
    return out.returncode, out.stdout


def test_workflow_report_job_gathers_the_plan_and_every_job(tmp_path: Path) -> None:
    """The report job's summary: the plan's rows replaced by each job's, "auto" and numbers both printed, and a
    failure (or a job that never reported) fails the run."""
    base = {"status": "would-publish", "error": None, "commit": None, "reason": "new repository"}
    rows = [
        {**base, "repo": "me/a", "branch": "main", "alpha": "auto"},
        {**base, "repo": "me/a", "branch": "k-0.5", "alpha": -0.5},
        {**base, "repo": "me/b", "branch": "main", "alpha": 1.0},
    ]
    plan = {"dry_run": True, "calibrations": 0, "counts": {"would-publish": 3}, "variants": rows}
    done = {**base, "status": "published", "commit": "a" * 40, "reason": ""}
    job_a = {"calibrations": 1, "variants": [{**rows[0], **done}, {**rows[1], **done}]}
    job_b = {"calibrations": 1, "variants": [{**rows[2], **done}]}

    code, out = _summary(tmp_path / "1", plan, [job_a, job_b], "success")
    assert code == 0
    assert "**2 publishing job(s)**: {'published': 3}, 2 calibration(s)" in out
    assert "| me/a@main | auto | published | aaaaaaaaaaaa |" in out and "| me/a@k-0.5 | -0.5 | published |" in out

    code, out = _summary(tmp_path / "2", plan, [job_a], "failure")  # job b died before writing its report
    assert code == 1 and "| me/b@main | 1 | would-publish | new repository |" in out
    code, out = _summary(tmp_path / "3", plan, [], "skipped")  # a dry run: nothing was meant to publish
    assert code == 0 and "would-publish" in out
    failed = {"calibrations": 1, "variants": [{**rows[2], **base, "status": "failed", "error": "boom"}]}
    code, out = _summary(tmp_path / "4", plan, [job_a, failed], "failure")
    assert code == 1 and "| me/b@main | 1 | failed | boom |" in out


def test_plan_json_lists_one_entry_per_group_with_work_and_group_publishes_it(
    hub: HubServer, llama_dir: Path, qwen3_dir: Path, prompt_files, tmp_path: Path, spies: dict[str, Spy]
) -> None:
    models = [(llama_dir, "me/{model}-k{alpha}"), (qwen3_dir, "me/{model}-k{alpha}")]
    variants = _variants(tmp_path, models, "[0.5, 1]", prompt_files)
    ids = ["g0-llama-refusal", "g1-qwen3-refusal"]
    assert [v.group_id for v in load_variants(variants)] == [ids[0], ids[0], ids[1], ids[1]]

    code, out, err = _cli("publish", str(variants), "--plan-json", "--report", str(tmp_path / "plan.json"))
    assert code == 0, err
    matrix = json.loads(out)  # stdout holds the matrix and nothing else
    assert [(e["id"], e["model"], e["prompt_set"], e["targets"]) for e in matrix["include"]] == [
        (ids[0], "llama", "refusal", ["me/llama-k0.5@main", "me/llama-k1@main"]),
        (ids[1], "qwen3", "refusal", ["me/qwen3-k0.5@main", "me/qwen3-k1@main"]),
    ]
    source = json.loads((tmp_path / "plan.json").read_text())["variants"][0]["source"]
    assert matrix["include"][0]["source"] == f"llama@{source['revision']}"
    assert len({e["cache_key"] for e in matrix["include"]}) == 2
    assert "would-publish" in err and spies["calibrate"].calls == 0 and not _pushes(hub)

    # one job: one group, one calibration; the plan then lists only the other group
    code, out, err = _cli("publish", str(variants), "--group", ids[1], "--report", str(tmp_path / "g1.json"))
    assert code == 0, err
    report = json.loads((tmp_path / "g1.json").read_text())
    assert [v["repo"] for v in report["variants"]] == ["me/qwen3-k0.5", "me/qwen3-k1"]
    assert report["calibrations"] == 1 and spies["calibrate"].calls == 1
    code, out, err = _cli("publish", str(variants), "--plan-json")
    assert code == 0 and [e["id"] for e in json.loads(out)["include"]] == [ids[0]]

    code, out, err = _cli("publish", str(variants), "--group", "g7-nothing")
    assert code == 2 and not out
    assert err == (
        f"bakesteer: error: variants file variants.toml: no calibration group 'g7-nothing'; "
        f"groups: {ids[0]}, {ids[1]}\n"
    )
