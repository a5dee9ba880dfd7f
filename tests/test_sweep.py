"""Sweeps, last-token steering, ``eval`` of a written checkpoint, ``--alpha auto`` and the measured card section."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import torch

from bakesteer import ConvertOptions, convert
from bakesteer.errors import EvaluationError
from bakesteer.sweep import (
    AUTO_GRID,
    AUTO_MAX_FLUENCY_RATIO,
    SweepResult,
    SweepRun,
    auto_alphas,
    choose_alpha,
    effect_key,
    relative_dose,
    sweep,
    walk_grid,
    window,
)

#: Short generations and few eval prompts keep the tier fast; the recipes do not depend on the sizes.
FAST = dict(max_new_tokens=8, long_tokens=32)


@pytest.fixture(scope="module")
def eval_prompts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from importlib import resources

    lines = resources.files("bakesteer.data").joinpath("eval_prompts.txt").read_text().splitlines()[:10]
    path = tmp_path_factory.mktemp("eval") / "eval.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def options(prompt_files: tuple[Path, Path], eval_prompts: Path) -> ConvertOptions:
    positive, negative = prompt_files
    return ConvertOptions(positive=positive, negative=negative, eval_prompts=eval_prompts, **FAST)


@pytest.fixture(scope="module")
def swept(llama_dir: Path, options: ConvertOptions, tmp_path_factory: pytest.TempPathFactory) -> SweepResult:
    out = tmp_path_factory.mktemp("sweep") / "sweep"
    return sweep(str(llama_dir), out, options, alphas=(-1.0, 0.0, 1.5), modes=("broadcast", "last-token"))


# --------------------------------------------------------------------------- last-token steering


def _capture(model, spec, run):
    """Block outputs of every layer while ``run()`` executes (a hook registered after the steering hook sees the
    steered output)."""
    from bakesteer.hooks import layer_hooks

    seen: dict[int, torch.Tensor] = {}

    def record(index: int, hidden: torch.Tensor) -> None:
        seen[index] = hidden.detach().clone()

    with layer_hooks(model, spec, record):
        result = run()
    return seen, result


@torch.no_grad()
def test_last_token_mode_changes_exactly_the_last_position_then_each_generated_token(llama_dir: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    from bakesteer.architectures import spec_for
    from bakesteer.batching import left_padded_batches
    from bakesteer.hooks import steering

    model = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32).eval()
    spec = spec_for(AutoConfig.from_pretrained(llama_dir))
    band = (2, 4)
    offsets = torch.zeros(5, 64)
    offsets[band[0] : band[1]] = torch.randn(2, 64, generator=torch.Generator().manual_seed(3))
    batch = next(left_padded_batches([[1, 5, 9, 33, 2, 40], [1, 7, 8]], 2, 0))
    kwargs = dict(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids)

    def prefill_and_decode(mode: str | None):
        def run():
            out = model(**kwargs, use_cache=True)
            return out.past_key_values

        if mode is None:
            prefill, cache = _capture(model, spec, run)
        else:
            with steering(model, spec, offsets, mode=mode):
                prefill, cache = _capture(model, spec, run)
        step = dict(
            input_ids=torch.tensor([[11], [12]]),
            attention_mask=torch.cat([batch.attention_mask, torch.ones(2, 1, dtype=torch.long)], dim=1),
            position_ids=batch.position_ids[:, -1:] + 1,
            past_key_values=cache,
            use_cache=True,
        )
        if mode is None:
            decode, _ = _capture(model, spec, lambda: model(**step))
        else:
            with steering(model, spec, offsets, mode=mode):
                decode, _ = _capture(model, spec, lambda: model(**step))
        return prefill, decode

    base_prefill, base_decode = prefill_and_decode(None)
    last_prefill, last_decode = prefill_and_decode("last-token")
    broad_prefill, _ = prefill_and_decode("broadcast")
    real = batch.attention_mask.bool()
    for layer in range(5):
        # every position but the last is untouched at every layer (causal attention never looks ahead)
        assert torch.equal(last_prefill[layer][:, :-1][real[:, :-1]], base_prefill[layer][:, :-1][real[:, :-1]])
        if layer < band[0]:
            assert torch.equal(last_prefill[layer], base_prefill[layer])
            assert torch.equal(last_decode[layer], base_decode[layer])
        else:
            assert not torch.allclose(last_prefill[layer][:, -1], base_prefill[layer][:, -1])
            assert not torch.allclose(last_decode[layer], base_decode[layer])  # each generated token is steered
            # broadcast steers every real position
            assert not torch.allclose(broad_prefill[layer][:, 0][real[:, 0]], base_prefill[layer][:, 0][real[:, 0]])
    first = band[0]
    # at the first steered block nothing upstream changed, so the output is the base output plus the offset,
    # for the last prompt token and for the generated token alike (the cache of that block is unsteered)
    torch.testing.assert_close(last_prefill[first][:, -1], base_prefill[first][:, -1] + offsets[first])
    torch.testing.assert_close(last_decode[first], base_decode[first] + offsets[first])


def test_unknown_steering_mode_is_refused(llama_dir: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    from bakesteer.architectures import spec_for
    from bakesteer.hooks import steering

    model = AutoModelForCausalLM.from_pretrained(llama_dir)
    with pytest.raises(ValueError, match="unknown steering mode"):
        with steering(model, spec_for(AutoConfig.from_pretrained(llama_dir)), torch.zeros(5, 64), mode="first"):
            pass


# --------------------------------------------------------------------------- the sweep


def test_sweep_runs_and_files(swept: SweepResult, tmp_path_factory: pytest.TempPathFactory) -> None:
    assert [(r.alpha, r.mode) for r in swept.runs] == [
        (a, m) for a in (-1.0, 0.0, 1.5) for m in ("broadcast", "last-token")
    ]
    base = swept.run(0.0).metrics
    assert base["kl"] == 0.0 and swept.run(0.0, "last-token").metrics == base  # k = 0 is the base in both modes
    for alpha in (-1.0, 1.5):
        broadcast, last = swept.run(alpha).metrics, swept.run(alpha, "last-token").metrics
        assert broadcast["kl"] > 0 and last["kl"] > 0
        assert broadcast["kl"] != last["kl"]  # last-token leaves the earlier prompt positions alone
        assert last["perplexity"] == broadcast["perplexity"]  # the reference text is read as generated tokens
        assert broadcast["perplexity"] != base["perplexity"]
    # the concept score moves with k along the direction
    assert swept.run(-1.0).metrics["concept"] < base["concept"] < swept.run(1.5).metrics["concept"]
    n_eval, n_pos, n_neg = 10, 3, 3  # 10 eval prompts; ceil(0.2 * 12) held out of each 12-prompt set
    for run in swept.runs:
        sets = [s["set"] for s in run.samples]
        assert sets == ["eval"] * n_eval + ["positive"] * n_pos + ["negative"] * n_neg + ["long"] * 4
        m = run.metrics
        assert set(m) == {
            "kl",
            "perplexity",
            "fluency",
            "repetition",
            "concept",
            "refusal_rate",
            "refusal_score",
            "degenerate",
        }
        assert m["degenerate"]["answers"] == 4 and set(m["degenerate"]["reasons"]) == {
            "loop",
            "unclosed_think",
            "script",
        }
        assert 0 <= m["repetition"] <= 1 and set(m["refusal_rate"]) == {"positive", "negative"}
    assert len(swept.auroc) == 5 and all(a is None or 0 <= a <= 1 for a in swept.auroc)
    assert swept.concept["layer"] == 3  # the middle of band 2-4


def test_sweep_files(swept: SweepResult, llama_dir: Path, options: ConvertOptions, tmp_path: Path) -> None:
    from PIL import Image

    out = tmp_path / "files"
    out.mkdir()
    swept.write(out)
    data = json.loads((out / "sweep.json").read_text())
    assert set(data) >= {"model", "bakesteer_version", "band", "auroc", "runs"}
    assert data["model"] == "llama" and data["band"] == [2, 5]
    run = data["runs"][0]
    assert set(run) == {"alpha", "mode", "metrics", "samples", "dose"} and set(run["samples"][0]) == {
        "set",
        "prompt",
        "completion",
    }
    rows = list(csv.DictReader(io.StringIO((out / "sweep.csv").read_text())))
    assert len(rows) == 6 and float(rows[2]["alpha"]) == 0.0 and float(rows[2]["kl"]) == 0.0
    assert float(rows[0]["perplexity"]) == pytest.approx(swept.runs[0].metrics["perplexity"], rel=1e-12)
    for name in ("sweep.png", "layers.png"):
        Image.open(out / name).verify()


def test_sweep_cli_writes_only_the_report(llama_dir: Path, options: ConvertOptions, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from bakesteer.cli import main

    out = tmp_path / "cli"
    args = ["sweep", str(llama_dir), "-o", str(out), "--alphas=-0.5,0,0.5", "--modes", "broadcast"]
    args += ["--positive", str(options.positive), "--negative", str(options.negative)]
    args += ["--eval-prompts", str(options.eval_prompts), "--max-new-tokens", "4"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["layers.png", "sweep.csv", "sweep.json", "sweep.png"]
    assert "k=-0.5 broadcast" in result.stdout and "concept" in result.stdout
    bad = CliRunner().invoke(main, ["sweep", str(llama_dir), "-o", str(tmp_path / "x"), "--modes", "sideways"])
    assert bad.exit_code == 2 and "invalid --modes 'sideways'" in bad.stderr and "Traceback" not in bad.output
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------- eval == sweep


def test_broadcast_sweep_equals_eval_of_the_baked_checkpoint(
    swept: SweepResult, llama_dir: Path, options: ConvertOptions, tmp_path: Path
) -> None:
    from bakesteer.evaluate import evaluate

    out = convert(str(llama_dir), tmp_path / "baked", options.replace(alpha=1.5)).output
    report = evaluate(out, base=str(llama_dir), options=options)
    assert report.alpha == 1.5
    for who, alpha in (("model", 1.5), ("base", 0.0)):
        expected, got = swept.run(alpha).metrics, report.metrics[who]
        for key in ("kl", "perplexity", "fluency", "repetition", "concept", "refusal_score"):
            assert got[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-5), (who, key)
        assert got["refusal_rate"] == expected["refusal_rate"]
        assert report.samples[who] == swept.run(alpha).samples  # the same completions, token for token
    assert report.metrics["base"]["kl"] == 0.0
    assert report.concept == pytest.approx(swept.concept)


def test_eval_refuses_what_it_cannot_measure(llama_dir: Path, options: ConvertOptions, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from bakesteer.cli import main

    out = convert(str(llama_dir), tmp_path / "baked", options.replace(alpha=1.0)).output

    def run(*args: str) -> tuple[int, str]:
        result = CliRunner().invoke(main, ["eval", *args])
        assert "Traceback" not in result.output
        return result.exit_code, result.stderr

    code, err = run(str(llama_dir))
    assert code == 2 and "llama is not a bakesteer output (no bakesteer.json)" in err
    code, err = run(str(out))
    assert code == 2 and "converted from a local directory (llama) whose path is not recorded; pass that model " in err
    code, err = run(str(out), "--base", str(llama_dir))
    assert code == 2 and "it was calibrated with a positive prompt set of your own (harmful.txt)" in err
    other = tmp_path / "other.txt"
    other.write_text("\n".join(f"prompt number {i}" for i in range(12)))
    code, err = run(str(out), "--base", str(llama_dir), "--positive", str(other), "--negative", str(options.negative))
    assert code == 2 and "the positive prompt set other.txt is not the one it was calibrated with" in err
    report_file = tmp_path / "eval.json"
    args = [str(out), "--base", str(llama_dir), "--positive", str(options.positive), "--negative"]
    args += [str(options.negative), "--eval-prompts", str(options.eval_prompts), "--max-new-tokens", "4"]
    result = CliRunner().invoke(main, ["eval", *args, "--output", str(report_file)])
    assert result.exit_code == 0, result.output
    assert "base" in result.stdout and "k=1" in result.stdout
    assert json.loads(report_file.read_text())["metrics"]["base"]["kl"] == 0.0


# --------------------------------------------------------------------------- --alpha auto


def _metrics(fluency: float, repetition: float = 0.05, degenerate: float = 0.0, concept: float = 0.0) -> dict:
    flagged = degenerate >= 0.5
    return {
        "fluency": fluency,
        "repetition": repetition,
        "concept": concept,
        "degenerate": {"rate": degenerate, "answers": 4, "reasons": {}, "flagged": flagged},
    }


def _walk(table: dict[float, dict], direction: str = "positive") -> tuple[list[float], list[dict], list[float]]:
    measured: list[float] = []

    def measure(alpha: float) -> SweepRun:
        measured.append(alpha)
        return SweepRun(alpha, "broadcast", table[alpha], [])

    runs, decisions = walk_grid(measure, table[0.0], auto_alphas(direction)[1:])
    assert [r.alpha for r in runs] == measured
    return measured, decisions, [d["alpha"] for d in decisions if d["kept"]]


def test_auto_walks_up_stops_at_the_first_violation_and_bisects_once() -> None:
    assert auto_alphas("positive") == [0.0, *AUTO_GRID]
    assert auto_alphas("negative") == [0.0, *(-a for a in AUTO_GRID)]
    limit = AUTO_MAX_FLUENCY_RATIO * 10
    table = {0.0: _metrics(10.0), 0.25: _metrics(11), 0.5: _metrics(12), 0.75: _metrics(15)}
    table |= {1.0: _metrics(limit + 1), 0.875: _metrics(16), 1.5: _metrics(12), 2.0: _metrics(50)}
    measured, decisions, kept = _walk(table)
    assert measured == [0.25, 0.5, 0.75, 1.0, 0.875]  # 1.5 and 2.0 are never run; one bisection
    assert kept == [0.25, 0.5, 0.75, 0.875] and decisions[-1]["bisect"] and not decisions[3]["kept"]
    assert decisions[3]["why_not"] == f"fluency {(limit + 1) / 10:.3g}x k=0's"
    result = SweepResult(
        "m", (0, 1), [1.0], [None], [SweepRun(a, "broadcast", m, []) for a, m in table.items()], {}, {}
    )
    assert choose_alpha(result, decisions) == 0.875  # the strongest coherent k
    # a grid that never breaks: every k, no bisection
    calm = {a: _metrics(10.0) for a in (0.0, *AUTO_GRID)}
    measured, decisions, kept = _walk(calm)
    assert measured == list(AUTO_GRID) and not any(d["bisect"] for d in decisions)
    # repetition and the degeneration gate are violations too; a failing bisection keeps nothing new
    table = {0.0: _metrics(10.0), 0.25: _metrics(10.0), 0.5: _metrics(10.0, repetition=0.2), 0.375: _metrics(10, 0.3)}
    measured, decisions, kept = _walk(table)
    assert measured == [0.25, 0.5, 0.375] and kept == [0.25]
    assert decisions[1]["why_not"].startswith("repetition +0.15")
    table = {0.0: _metrics(10.0), -0.25: _metrics(10.0, degenerate=0.75), -0.125: _metrics(10.0)}
    measured, decisions, kept = _walk(table, "negative")
    assert measured == [-0.25, -0.125] and kept == [-0.125]  # bisected between 0 and the first k
    assert decisions[0]["why_not"] == "degenerate (75% of long answers)"
    table = {0.0: _metrics(10.0), -0.25: _metrics(100.0), -0.125: _metrics(100.0)}
    measured, decisions, kept = _walk(table, "negative")
    result = SweepResult(
        "m", (0, 1), [1.0], [None], [SweepRun(a, "broadcast", m, []) for a, m in table.items()], {}, {}
    )
    with pytest.raises(EvaluationError, match=r"no k stays coherent \(k = -0.25: fluency 10x k=0's\)"):
        choose_alpha(result, decisions)


def test_auto_with_a_judge_chooses_the_largest_judged_effect() -> None:
    judge = {"rubric": {"name": "concept", "verdict": "ratings", "ratings": ["concept", "instruction", "fluency"]}}
    table = {a: _metrics(10.0) for a in (0.0, *AUTO_GRID)}
    for alpha, rating in zip((0.0, *AUTO_GRID), (0.2, 0.5, 1.4, 1.4, 1.1, 0.9, 0.8), strict=True):
        table[alpha]["judge"] = {"concept": {"eval": rating}}
    runs = [SweepRun(a, "broadcast", m, []) for a, m in table.items()]
    _, decisions, _ = _walk(table)
    result = SweepResult("m", (0, 1), [1.0], [None], runs, {}, {})
    assert choose_alpha(result, decisions, judge) == 0.5  # 0.5 and 0.75 tie: the weaker one
    assert choose_alpha(result, decisions) == 2.0  # without the judge: the strongest coherent k
    assert effect_key(judge) == "judge.concept.eval" and effect_key(None) == "concept"
    assert effect_key({"rubric": {"verdict": "yesno"}}) == "judge.score.positive"


def test_window_and_dose() -> None:
    table = {a: _metrics(10.0, concept=0.1 * a) for a in (-1.0, -0.5, 0.0, 0.5, 1.0, 2.0)}
    table[0.5]["concept"], table[1.0]["concept"], table[2.0]["concept"] = 0.6, 1.2, 1.9
    table[-1.0]["concept"] = -0.7
    table[2.0]["fluency"] = 30.0  # the effect is there, but coherence is not
    dose = relative_dose((10, 20), 64)
    runs = [SweepRun(a, "broadcast", m, [], dose=dose(a)) for a, m in table.items()]
    found = window(runs, None)
    assert found is not None and found["effect"] == "concept" and found["threshold"] == 0.5
    assert found["positive"] == {"alphas": [0.5, 1.0], "k": [0.5, 1.0], "dose": [0.625, 1.25]}  # 10 * k / 8
    assert found["negative"] == {"alphas": [-1.0], "k": [-1.0, -1.0], "dose": [1.25, 1.25]}
    assert window([SweepRun(1.0, "broadcast", table[1.0], [])], None) is None  # no k = 0 to compare with


def test_convert_alpha_auto_and_eval(llama_dir: Path, options: ConvertOptions, tmp_path: Path) -> None:
    from huggingface_hub import ModelCard

    from bakesteer.vector import SteeringVector

    result = convert(str(llama_dir), tmp_path / "auto", options.replace(alpha="auto", eval=True))
    meta = json.loads((result.output / "bakesteer.json").read_text())
    record = meta["sweep"]
    assert record["rule"]["max_fluency_ratio"] == AUTO_MAX_FLUENCY_RATIO and record["chosen_by"] == "coherence"
    runs = {run["alpha"]: run["metrics"] for run in record["runs"]}
    assert list(runs) == record["grid"] and record["grid"][0] == 0.0
    assert record["runs_measured"] == len(record["decisions"]) + 1 == len(runs)
    # the walk stopped at its first violation (and bisected once after it), or ran the whole grid
    refused = [d for d in record["decisions"] if not d["kept"] and not d["bisect"]]
    if refused:
        assert record["decisions"].index(refused[0]) == len(record["decisions"]) - 2
    else:
        assert record["grid"] == [0.0, *AUTO_GRID]
    # the recorded decision follows from the recorded metrics
    expected = max((d["alpha"] for d in record["decisions"] if d["kept"]), key=abs)
    assert record["chosen"] == expected == meta["method"]["k"] == result.alpha
    assert meta["options"]["alpha"] == "auto" and meta["method"]["k_chosen_by"] == "sweep"
    vector = SteeringVector.load(result.output / "steering.safetensors")
    from safetensors import safe_open

    with safe_open(str(result.output / "steering.safetensors"), "pt") as f:
        assert torch.equal(f.get_tensor("offsets"), vector.offsets(result.band, expected))
    # the evaluation of the written checkpoint agrees with the auto sweep's run at the chosen k
    evaluation = meta["evaluation"]
    for key in ("kl", "perplexity", "fluency", "repetition", "concept"):
        assert evaluation["metrics"]["model"][key] == pytest.approx(runs[expected][key], rel=1e-5, abs=1e-5)
    full = json.loads((result.output / "evaluation.json").read_text())
    assert len(full["samples"]["model"]) == 10 + 3 + 3 + 4
    assert evaluation["examples"]["model"] == [s for s in full["samples"]["model"] if s["set"] == "eval"][:3]
    card = ModelCard.load(result.output / "README.md").text
    m = evaluation["metrics"]["model"]
    for needle in (
        "## Measured effect",
        f"| perplexity of a neutral reference text | {m['perplexity']:.4g} |",
        f"| first-token KL from the base (nats, held-out *harmless.txt* prompts) | {m['kl']:.3g} | 0 (by definition) |",
        f"chose\n**k = {expected}**",
        "![Each metric against k; the chosen k is dotted](sweep.png)",
        f"> **{evaluation['examples']['model'][0]['prompt']}**",
        "(chosen by `--alpha auto`, see *Measured effect*)",
    ):
        assert needle in card, needle
    assert (result.output / "sweep.png").is_file()
    # the fingerprint covers the sweep: another eval set or generation length gives another fingerprint
    from bakesteer.fingerprint import metadata_fingerprint
    from bakesteer.record import Record

    assert metadata_fingerprint(Record(meta)) == meta["fingerprint"]
    changed = {**meta, "options": {**meta["options"], "max_new_tokens": 9}}
    assert metadata_fingerprint(Record(changed)) != meta["fingerprint"]


def test_sweep_with_a_prompted_baseline_row(llama_dir: Path, options: ConvertOptions, tmp_path: Path) -> None:
    result = sweep(
        str(llama_dir),
        tmp_path / "sweep",
        options.replace(baseline_prompt="Always answer in French."),
        alphas=(0.0, 1.0),
        modes=("broadcast",),
    )
    assert [(r.alpha, r.mode) for r in result.runs] == [(0.0, "broadcast"), (1.0, "broadcast"), (0.0, "prompted")]
    base, prompted = result.run(0.0).metrics, result.run(0.0, "prompted").metrics
    assert prompted["kl"] > 0 and prompted["perplexity"] == base["perplexity"] and prompted["degenerate"]
    assert [s["prompt"] for s in result.run(0.0, "prompted").samples] == [s["prompt"] for s in result.run(0.0).samples]
    rows = list(csv.DictReader(io.StringIO((tmp_path / "sweep" / "sweep.csv").read_text())))
    assert [r["mode"] for r in rows] == ["broadcast", "broadcast", "prompted"]
    data = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert data["settings"]["baseline_prompt"] == "Always answer in French."
    assert data["runs"][1]["dose"] == pytest.approx(3 * 1.0 / 8)  # band 2-4 of the tiny model, d_model 64
    # the baseline changes what the base is asked, not what it is: without a chat template it is written before
    from transformers import AutoTokenizer

    from bakesteer.prompts import render_prompts

    tokenizer = AutoTokenizer.from_pretrained(llama_dir)
    plain = render_prompts(tokenizer, ["Hi"], chat_template=False, system="Be brief.")
    assert plain == [list(tokenizer("Be brief.\n\nHi")["input_ids"])]
    templated = tokenizer.decode(render_prompts(tokenizer, ["Hi"], chat_template=True, system="Be brief.")[0])
    assert templated.index("Be brief.") < templated.index("Hi")


def test_a_judge_that_read_nothing_leaves_the_effect_to_the_concept_score() -> None:
    judge = {"rubric": {"name": "concept", "verdict": "ratings", "ratings": ["concept", "instruction", "fluency"]}}
    table = {a: _metrics(10.0, concept=a) for a in (0.0, *AUTO_GRID)}
    for metrics in table.values():
        metrics["judge"] = {"concept": {"eval": None}, "unparseable": 24}
    runs = [SweepRun(a, "broadcast", m, [], dose=a) for a, m in table.items()]
    result = SweepResult("m", (0, 1), [1.0], [None], runs, {}, {})
    _, decisions, _ = _walk(table)
    assert choose_alpha(result, decisions, judge) == 2.0  # the strongest coherent k, as without a judge
    assert window(runs, judge)["effect"] == "concept"  # type: ignore[index]
