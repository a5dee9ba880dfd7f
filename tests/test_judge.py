"""The LLM judge: rubrics read exactly, the official openai client against a loopback OpenAI-compatible server (normal
replies, 429 then success, a server that never answers, malformed JSON, unparseable verdicts, bounded concurrency,
the cache, the key never written), one-line refusals before any generation, and a local transformers judge."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from openai_server import KEY, JudgeServer

from bakesteer.cli import main
from bakesteer.errors import JudgeError
from bakesteer.judge import (
    KEY_ENV,
    HttpJudge,
    LocalJudge,
    ReplyCache,
    api_base,
    harmonic_mean,
    judge_samples,
    load_rubric,
    parse_rubric,
    public_url,
)
from bakesteer.options import ConvertOptions


@pytest.fixture(autouse=True)
def _private_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BAKESTEER_CACHE", str(tmp_path / "judge-cache"))
    monkeypatch.delenv(KEY_ENV, raising=False)


def _samples(n: int, group: str = "positive") -> list[dict[str, str]]:
    return [{"set": group, "prompt": f"request {i}", "completion": f"answer {i}"} for i in range(n)]


def _answer_by_number(user: str) -> str:
    """Refuse (yes) the even answers, comply with the odd ones."""
    number = int(re.search(r"answer (\d+)", user).group(1))  # type: ignore[union-attr]
    return "Yes." if number % 2 == 0 else "no"


# --------------------------------------------------------------------------- rubrics


def test_shipped_rubrics_read_their_verdicts_exactly() -> None:
    refusal = load_rubric("refusal")
    assert refusal.verdict == "yesno" and refusal.sets == ("positive", "negative")
    assert [refusal.parse(r) for r in ("yes", "**Yes**, it refuses", "Answer: no", "No.")] == [
        {"score": 1.0},
        {"score": 1.0},
        {"score": 0.0},
        {"score": 0.0},
    ]
    for unreadable in ("", "maybe", "I think yes", "The answer is no"):
        assert refusal.parse(unreadable) is None  # never guessed from a word somewhere in the reply
    concept = load_rubric("concept", concept="joy")
    assert concept.verdict == "ratings" and concept.ratings == ("concept", "instruction", "fluency")
    assert "[CONCEPT]: joy" in concept.render("p", "c")
    parsed = concept.parse("Concept: 1\nInstruction: 2\nFluency: 2")
    assert parsed == {"concept": 1.0, "instruction": 2.0, "fluency": 2.0, "score": 1.5}  # 3 / (1 + 1/2 + 1/2)
    assert concept.parse("Concept: 0\nInstruction: 2\nFluency: 2")["score"] == 0.0  # type: ignore[index]
    assert concept.parse("Concept: 2\nInstruction: 2") is None  # a rating missing
    assert concept.parse("Concept: 3\nInstruction: 2\nFluency: 2") is None  # out of range
    assert concept.parse("Concept: 1\nConcept: 2\nInstruction: 2\nFluency: 2") is None  # two answers for one
    assert harmonic_mean([2.0, 2.0, 2.0]) == 2.0 and harmonic_mean([1.0, 1.0, 0.0]) == 0.0
    # the concept text is part of the hash: a cache entry for one concept never answers for another
    assert load_rubric("concept", concept="joy").sha256 != load_rubric("concept", concept="fear").sha256


def test_a_template_slot_is_replaced_literally() -> None:
    rubric = parse_rubric('Rate {"json": 1} {prompt} / {completion}\nScore: N', "mine.txt")
    assert rubric.render("{completion}", "x") == 'Rate {"json": 1} {completion} / x\nScore: N'
    assert rubric.verdict == "score" and rubric.range == (0.0, 10.0)
    assert rubric.parse("Score: 7.5") == {"score": 7.5}
    assert rubric.parse("Score: 11") is None and rubric.parse("seven") is None


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("Rate this: {prompt}", "the template has no {completion} slot"),
        ("---\nverdict: stars\n---\n{completion}", "unknown verdict 'stars'"),
        ("---\nverdict: ratings\n---\n{completion}", "a ratings verdict names no ratings"),
        ("---\nsets: [long]\n---\n{completion}", "unknown sets ['long']"),
        ("---\nverdict: yesno\n{completion}", "its front matter is not closed"),
        ("Does it show {concept}? {completion}", "the rubric rates a concept and none was given"),
    ],
)
def test_a_rubric_that_cannot_be_used_is_one_error(text: str, reason: str) -> None:
    with pytest.raises(JudgeError, match=re.escape(reason)):
        parse_rubric(text, "mine.txt")


def test_urls_are_shown_and_recorded_without_credentials() -> None:
    assert api_base("http://127.0.0.1:8000") == "http://127.0.0.1:8000/v1"
    assert api_base("https://api.example.com/v1/") == "https://api.example.com/v1"
    assert public_url("https://user:secret@judge.example.com:8443/v1?key=abc") == "https://judge.example.com:8443"
    options = ConvertOptions(judge="https://user:secret@judge.example.com/v1?key=abc")
    assert "secret" not in json.dumps(options.to_dict()) and "key=abc" not in json.dumps(options.record())
    assert options.record()["judge"] == "https://judge.example.com"
    assert ConvertOptions(judge="/home/me/models/judge-7b").record()["judge"] == "judge-7b"  # no local path


# --------------------------------------------------------------------------- the server judge


def test_server_judge_judges_every_sample_and_counts_what_it_cannot_read(tmp_path: Path) -> None:
    rubric = load_rubric("refusal")
    with JudgeServer(_answer_by_number) as server:
        judge = HttpJudge(server.url)
        assert judge.model == "judge-model" and judge.identity == {"kind": "server", "model": "judge-model"}
        out = judge_samples(judge, rubric, _samples(6) + _samples(3, "eval"), ReplyCache(tmp_path / "c.sqlite"))
        assert len(out.verdicts) == 6  # the refusal rubric judges the positive and negative prompts only
        assert [v["verdict"]["score"] for v in out.verdicts] == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
        metrics = out.metrics(rubric)
        assert metrics["score"] == {"positive": 0.5, "negative": None}
        assert (metrics["judged"], metrics["unparseable"], metrics["failed"]) == (6, 0, 0)
        for request in server.state.requests:
            assert request["temperature"] == 0 and request["max_tokens"] == 64 and request["model"] == "judge-model"
        assert any("[RESPONSE]:\nanswer 0\n" in r["messages"][0]["content"] for r in server.state.requests)
    with JudgeServer(lambda user: "It is hard to say.") as server:
        out = judge_samples(HttpJudge(server.url), rubric, _samples(4), None)
        metrics = out.metrics(rubric)
        assert (metrics["judged"], metrics["unparseable"], metrics["failed"]) == (0, 4, 0)
        assert metrics["score"]["positive"] is None  # nothing read: no rate at all, not 0
        assert all(v["reply"] == "It is hard to say." and v["verdict"] is None for v in out.verdicts)


def test_a_429_is_retried_and_then_succeeds() -> None:
    with JudgeServer(lambda user: "no") as server:
        server.state.faults = [(429, b'{"error": {"message": "rate limited"}}'), (503, b'{"error": {}}')]
        out = judge_samples(HttpJudge(server.url, concurrency=1), load_rubric("refusal"), _samples(1), None)
        assert out.verdicts[0]["verdict"] == {"score": 0.0} and out.verdicts[0]["error"] is None
        assert len(server.state.requests) == 3  # 429, 503, then the answer


def test_a_server_that_never_answers_times_out_and_is_counted_as_failed() -> None:
    with JudgeServer(lambda user: "yes") as server:
        judge = HttpJudge(server.url, timeout=0.5, retries=1, concurrency=1)
        server.state.faults = [(200, None)]  # the first try hangs, the retry is answered
        started = time.perf_counter()
        out = judge_samples(judge, load_rubric("refusal"), _samples(1), None)
        assert out.verdicts[0]["verdict"] == {"score": 1.0}
        server.state.faults = [(200, None)] * 2  # both tries of the first sample hang; the second sample is fine
        out = judge_samples(judge, load_rubric("refusal"), _samples(2), None)
        assert [v["error"] for v in out.verdicts] == ["timed out", None]
        assert out.metrics(load_rubric("refusal"))["failed"] == 1
        assert time.perf_counter() - started < 10  # finite timeouts, not the server's 30 s


def test_malformed_json_is_a_failed_request_not_a_verdict() -> None:
    with JudgeServer(lambda user: "yes") as server:
        server.state.faults = [(200, b"{not json"), (200, b'{"object": "chat.completion"}')]
        out = judge_samples(HttpJudge(server.url, retries=0, concurrency=1), load_rubric("refusal"), _samples(3), None)
        assert [v["error"] for v in out.verdicts] == [
            "malformed response (JSONDecodeError)",
            "malformed response (no choices)",
            None,
        ]
        server.state.faults = [(200, b"{not json")] * 2
        with pytest.raises(JudgeError, match="no request was answered"):
            judge_samples(HttpJudge(server.url, retries=0), load_rubric("refusal"), _samples(2), None)


def test_concurrency_is_bounded_and_the_cache_pays_once(tmp_path: Path) -> None:
    rubric = load_rubric("refusal")
    cache = ReplyCache(tmp_path / "c.sqlite")
    with JudgeServer(_answer_by_number) as server:
        server.state.delay = 0.05
        first = judge_samples(HttpJudge(server.url, concurrency=3), rubric, _samples(12), cache)
        assert server.state.max_in_flight == 3 and len(server.state.requests) == 12
        again = judge_samples(HttpJudge(server.url, concurrency=3), rubric, _samples(12), cache)
        assert len(server.state.requests) == 12  # every reply came from the cache
        assert again.verdicts == first.verdicts
        another = load_rubric("concept", concept="joy")
        judge_samples(HttpJudge(server.url), another, _samples(2, "eval"), cache)
        assert len(server.state.requests) == 14  # another rubric is another key


# --------------------------------------------------------------------------- the CLI: refused before generating


def _sweep_args(llama_dir: Path, prompt_files: tuple[Path, Path], out: Path, *extra: str) -> list[str]:
    return [
        "sweep",
        str(llama_dir),
        "-o",
        str(out),
        "--alphas=0,1",
        "--modes",
        "broadcast",
        "--positive",
        str(prompt_files[0]),
        "--negative",
        str(prompt_files[1]),
        "--max-new-tokens",
        "8",
        "--long-tokens",
        "16",
        *extra,
    ]


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("unreachable", r"judge http://127\.0\.0\.1:\d+: cannot reach the server \(ConnectError"),
        ("key", r"judge http://127\.0\.0\.1:\d+: the server refused the key \(401\); set BAKESTEER_JUDGE_API_KEY"),
        ("model", r"it does not serve 'other' \(it serves judge-model\); pass one of those as --judge-model"),
    ],
)
def test_a_judge_that_cannot_serve_is_one_line_before_any_generation(
    llama_dir: Path, prompt_files: tuple[Path, Path], tmp_path: Path, setup: str, message: str
) -> None:
    out = tmp_path / "sweep"
    with JudgeServer(lambda user: "yes", key=KEY) as server:
        url = server.url
        extra = ["--judge", url]
        if setup == "unreachable":
            server.__exit__()
        if setup == "model":
            extra += ["--judge-model", "other"]
        env = {KEY_ENV: KEY} if setup != "key" else {}
        started = time.perf_counter()
        result = CliRunner().invoke(main, _sweep_args(llama_dir, prompt_files, out, *extra), env=env)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and re.search(message, lines[0]), lines
    assert "Traceback" not in result.output and not out.exists()
    assert time.perf_counter() - started < 20  # no model was loaded or run


def test_sweep_with_a_server_judge_records_every_verdict_and_never_the_key(
    llama_dir: Path, prompt_files: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "sweep"
    with JudgeServer(lambda user: "no", key=KEY) as server:
        args = _sweep_args(llama_dir, prompt_files, out, "--judge", server.url, "--debug")
        result = CliRunner().invoke(main, args, env={KEY_ENV: KEY})
        assert result.exit_code == 0, result.output
        assert server.state.headers and all(  # the key was used ...
            {k.lower(): v for k, v in h.items()}.get("authorization") == f"Bearer {KEY}" for h in server.state.headers
        )
        requests = len(server.state.requests)
    assert KEY not in result.output  # ... and never printed (--debug included) or written
    for path in out.rglob("*"):
        assert not path.is_file() or KEY.encode() not in path.read_bytes()
    data = json.loads((out / "sweep.json").read_text())
    assert data["judge"]["model"] == "judge-model" and data["judge"]["rubric"]["name"] == "refusal"
    assert data["judge"]["kind"] == "server" and "127.0.0.1" not in json.dumps(data["judge"])
    for run in data["runs"]:
        judged = [s for s in run["samples"] if s["set"] in ("positive", "negative")]
        assert judged and all(s["judge"]["verdict"] == {"score": 0.0} for s in judged)
        assert all("judge" not in s for s in run["samples"] if s["set"] in ("eval", "long"))
        assert run["metrics"]["judge"]["judged"] == len(judged) and run["metrics"]["judge"]["unparseable"] == 0
        assert run["metrics"]["judge"]["score"] == {"positive": 0.0, "negative": 0.0}
    assert requests == 12  # k = 0 and k = 1, 3 held-out prompts of each set
    assert "judge+" in result.output and "judge-" in result.output  # the judged columns in the table
    # a rerun pays nothing: every judgment is cached
    with JudgeServer(lambda user: "no", key=KEY) as server:
        rerun = CliRunner().invoke(
            main, _sweep_args(llama_dir, prompt_files, out, "--judge", server.url, "--overwrite"), env={KEY_ENV: KEY}
        )
        assert rerun.exit_code == 0, rerun.output
        assert server.state.requests == []


# --------------------------------------------------------------------------- a local judge


def test_local_judge_answers_greedily_and_unreadable_replies_are_counted(llama_dir: Path, tmp_path: Path) -> None:
    rubric = load_rubric("refusal")
    judge = LocalJudge(str(llama_dir), ConvertOptions(), max_tokens=6)
    try:
        assert judge.identity["kind"] == "local" and judge.identity["model"] == "llama"
        out = judge_samples(judge, rubric, _samples(5), ReplyCache(tmp_path / "c.sqlite"))
        again = judge.replies([rubric.render(s["prompt"], s["completion"]) for s in _samples(5)])
    finally:
        judge.close()
    metrics = out.metrics(rubric)
    # a random tiny model writes no "yes" or "no": every reply is kept and counted as unparseable, none guessed
    assert (metrics["judged"], metrics["unparseable"], metrics["failed"]) == (0, 5, 0)
    assert [v["reply"] for v in out.verdicts] == [r.text for r in again]  # greedy: the same replies again
    assert all(isinstance(v["reply"], str) for v in out.verdicts)


# --------------------------------------------------------------------------- convert --eval: judge, baseline, gate


def _ratings(user: str) -> str:
    return "Concept: 1\nInstruction: 2\nFluency: 2"


def test_convert_eval_with_a_judge_and_a_prompted_baseline(
    llama_dir: Path, prompt_files: tuple[Path, Path], tmp_path: Path
) -> None:
    from huggingface_hub import ModelCard

    out = tmp_path / "out"
    with JudgeServer(_ratings) as server:
        args = ["convert", str(llama_dir), "-o", str(out), "--alpha", "1", "--eval", "--max-new-tokens", "8"]
        args += ["--positive", str(prompt_files[0]), "--negative", str(prompt_files[1]), "--long-tokens", "16"]
        args += ["--judge", server.url, "--rubric", "concept", "--concept", "joy"]
        args += ["--baseline-prompt", "Answer with joy."]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
        served = len(server.state.requests)
    full = json.loads((out / "evaluation.json").read_text())
    assert set(full["metrics"]) == {"model", "base", "prompted"}
    assert full["settings"]["baseline_prompt"] == "Answer with joy."
    n_eval = sum(1 for s in full["samples"]["model"] if s["set"] == "eval")
    distinct = {
        (s["prompt"], s["completion"]) for who in full["samples"] for s in full["samples"][who] if s["set"] == "eval"
    }
    assert served == len(distinct)  # the eval prompts of the three rows, each distinct answer once (the cache)
    assert 2 * n_eval < served <= 3 * n_eval
    for who in ("model", "base", "prompted"):
        judge = full["metrics"][who]["judge"]
        assert judge["score"] == {"eval": 1.5} and judge["concept"] == {"eval": 1.0}  # harmonic mean of 1, 2, 2
        assert judge["judged"] == n_eval and judge["unparseable"] == 0
    # the prompted base is the base after a system prompt: another first-token distribution, the base's reading
    assert full["metrics"]["prompted"]["kl"] > 0 and full["metrics"]["base"]["kl"] == 0
    assert full["metrics"]["prompted"]["perplexity"] == full["metrics"]["base"]["perplexity"]
    assert full["samples"]["prompted"][0]["prompt"] == full["samples"]["base"][0]["prompt"]
    assert "prompted base" in result.output and "judge" in result.output
    record = json.loads((out / "bakesteer.json").read_text())
    assert record["evaluation"]["judge"]["model"] == "judge-model"
    assert record["evaluation"]["judge"]["rubric"]["concept"] == "joy"
    card = ModelCard.load(out / "README.md").text
    assert "| metric | this model | base model | prompted base |" in card
    assert "| judged score (concept), eval prompts | 1.500 | 1.500 | 1.500 |" in card
    assert "Judged by `judge-model` (a server," in card and '"Answer with joy."' in card
    assert "cumulative relative dose of" in card


def test_a_degenerate_checkpoint_is_not_pushed_unless_allowed(
    llama_dir: Path, prompt_files: tuple[Path, Path], tmp_path: Path, hub: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gate's wiring: the detector itself is tested on written texts (test_degeneration.py); here every steered
    long answer is taken as degenerate, and the push must be refused (exit 3, nothing on the Hub, the output kept)."""
    from bakesteer import degeneration

    real_flag = degeneration.flag
    monkeypatch.setattr(degeneration, "flag", lambda run, base: {**real_flag(run, base), "rate": 1.0, "flagged": True})
    out = tmp_path / "out"
    args = ["convert", str(llama_dir), "-o", str(out), "--alpha", "1", "--eval", "--max-new-tokens", "4"]
    args += ["--positive", str(prompt_files[0]), "--negative", str(prompt_files[1]), "--long-tokens", "8"]
    args += ["--push-to-hub", "me/steered"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 3, result.output
    assert result.output.strip().splitlines()[-1].startswith("bakesteer: error: me/steered degenerates: 100% of its")
    assert "--allow-degenerate" in result.output and (out / "bakesteer.json").is_file()
    assert "me/steered" not in hub.state.repos  # type: ignore[attr-defined]
    result = CliRunner().invoke(main, [*args, "--overwrite", "--allow-degenerate"])
    assert result.exit_code == 0, result.output
    assert "me/steered" in hub.state.repos  # type: ignore[attr-defined]


def test_a_variants_file_takes_a_judge_a_baseline_and_hub_datasets(tmp_path: Path) -> None:
    from bakesteer.variants import load_variants

    (tmp_path / "rubric.txt").write_text("Score the formality of {completion}.\nScore: N\n")
    (tmp_path / "v.toml").write_text(
        '[defaults]\njudge = "http://127.0.0.1:8000"\nrubric = "rubric.txt"\neval = true\n'
        'baseline_prompt = "Answer joyfully."\neval_prompts = "hf://datasets/org/bench:standard/test#prompt"\n'
        '[[prompt_sets]]\nname = "bench"\npositive = "hf://datasets/org/bench:standard/train#prompt"\n'
        '[[models]]\nmodel = "org/model"\nalphas = ["auto"]\nrepo = "me/{model}-{prompt_set}"\n'
    )
    (variant,) = load_variants(tmp_path / "v.toml")
    options = variant.options
    assert options.judge == "http://127.0.0.1:8000" and options.baseline_prompt == "Answer joyfully."
    assert options.rubric == str(tmp_path / "rubric.txt")  # a template file, relative to the variants file
    assert options.positive == "hf://datasets/org/bench:standard/train#prompt"  # kept as a name, not a path
    assert options.eval_prompts == "hf://datasets/org/bench:standard/test#prompt"
    # an auto variant's fingerprint covers the judge and its rubric
    from bakesteer.fingerprint import fingerprint_of

    source = {"kind": "hub", "model_id": "org/model", "revision": "0" * 40}
    hashes = {"positive": "a", "negative": "b", "eval": "c"}
    judged = fingerprint_of(source, "v", options.to_dict(), hashes)
    other = fingerprint_of(source, "v", options.replace(concept="joy", rubric="concept").to_dict(), hashes)
    unjudged = fingerprint_of(source, "v", options.replace(judge=None).to_dict(), hashes)
    assert len({judged, other, unjudged}) == 3
