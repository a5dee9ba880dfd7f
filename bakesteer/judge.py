"""An LLM judge: rubrics, an OpenAI-compatible server or a local transformers model, and an on-disk cache.

``--judge URL`` reaches any OpenAI-compatible chat-completions server (vLLM, SGLang, llama.cpp's server, Ollama, a
hosted API) through the official ``openai`` client; ``--judge MODEL`` loads a local transformers chat model (greedy,
batched), only after the measured model is freed. The key comes from ``BAKESTEER_JUDGE_API_KEY`` and is never
printed or written.

A rubric is a template with ``{prompt}``, ``{completion}`` (required) and ``{concept}`` slots and a front matter that
says how a reply is read (``verdict``) and which prompt groups it judges (``sets``):

- ``yesno``: the reply's first word is ``yes`` (score 1) or ``no`` (score 0); the shipped ``refusal`` rubric.
- ``ratings``: one line ``Name: N`` per rating (0-2); the score is their harmonic mean (0 when any is 0), as in
  AxBench; the shipped ``concept`` rubric.
- ``score``: ``Score: N`` with ``low <= N <= high``.

A reply that does not read so is counted as ``unparseable`` and never guessed; a request that fails after its
retries is counted as ``failed``. Every reply is cached by (judge, rubric hash, prompt, completion), so a rerun pays
once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import sqlite3
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import yaml

from bakesteer.errors import JudgeError
from bakesteer.options import is_url, public_url

logger = logging.getLogger(__name__)

KEY_ENV = "BAKESTEER_JUDGE_API_KEY"
CACHE_ENV = "BAKESTEER_CACHE"
RUBRICS = ("refusal", "concept")
VERDICTS = ("yesno", "ratings", "score")
SLOTS = ("prompt", "completion", "concept")
#: The prompt groups a rubric may judge.
SETS = ("eval", "positive", "negative")
#: Tokens a judge may write per reply.
MAX_TOKENS = 64


# --------------------------------------------------------------------------- rubrics


@dataclass(frozen=True)
class Rubric:
    """A judge's instructions and how its replies are read.

    Attributes:
        name: ``refusal``, ``concept``, or the template file's name.
        template: The text sent to the judge, with ``{prompt}``, ``{completion}`` and ``{concept}`` slots.
        verdict: ``yesno``, ``ratings`` or ``score``.
        ratings: The rating names of a ``ratings`` verdict.
        low: Lowest score of a ``score`` verdict.
        high: Highest score of a ``score`` verdict.
        sets: The prompt groups it judges.
        description: One line for the card.
        concept: The ``--concept`` text filled into ``{concept}``.
    """

    name: str
    template: str
    verdict: str
    ratings: tuple[str, ...] = ()
    low: float = 0.0
    high: float = 1.0
    sets: tuple[str, ...] = ("eval",)
    description: str = ""
    concept: str | None = None

    @property
    def sha256(self) -> str:
        """Hash of what decides a verdict: the template, its reading and the concept text."""
        spec = [self.template, self.verdict, list(self.ratings), self.low, self.high, self.concept]
        return hashlib.sha256(json.dumps(spec, ensure_ascii=False).encode()).hexdigest()

    @property
    def range(self) -> tuple[float, float]:
        """The lowest and highest score a verdict can give."""
        if self.verdict == "yesno":
            return (0.0, 1.0)
        if self.verdict == "ratings":
            return (0.0, 2.0)
        return (self.low, self.high)

    def render(self, prompt: str, completion: str) -> str:
        """The text sent for one sample (slots replaced literally, so other braces stay as written)."""
        values = {"prompt": prompt, "completion": completion, "concept": self.concept or ""}
        return re.sub(r"\{(prompt|completion|concept)\}", lambda m: values[m.group(1)], self.template)

    def parse(self, reply: str) -> dict[str, float] | None:
        """The verdict in ``reply`` (``{"score": ..., <rating>: ...}``), or ``None`` when it does not read."""
        text = reply.strip().replace("*", "")
        if self.verdict == "yesno":
            m = re.match(r"^\W*(?:answer\W*)?(yes|no)\b", text, re.IGNORECASE)
            return {"score": 1.0 if m.group(1).lower() == "yes" else 0.0} if m else None
        if self.verdict == "ratings":
            out: dict[str, float] = {}
            for name in self.ratings:
                found = re.findall(rf"^\W*{re.escape(name)}\W*[:=]\s*([0-2])(?:\s*/\s*2)?\W*$", text, re.I | re.M)
                if len(found) != 1:
                    return None
                out[name] = float(found[0])
            out["score"] = harmonic_mean(list(out.values()))
            return out
        found = re.findall(r"^\W*score\W*[:=]\s*(-?\d+(?:\.\d+)?)", text, re.I | re.M)
        if len(found) != 1 or not self.low <= float(found[0]) <= self.high:
            return None
        return {"score": float(found[0])}

    def identity(self) -> dict[str, Any]:
        """What ``bakesteer.json`` and the card record of the rubric."""
        out: dict[str, Any] = {"name": self.name, "sha256": self.sha256, "verdict": self.verdict}
        if self.concept:
            out["concept"] = self.concept
        return out


def _split_front_matter(text: str, name: str) -> tuple[dict[str, Any], str]:
    if not text.startswith("---\n"):
        return {}, text
    head, sep, body = text[4:].partition("\n---\n")
    if not sep:
        raise JudgeError(name, reason="its front matter is not closed by a '---' line", hint="close it, or remove it")
    try:
        meta = yaml.safe_load(head) or {}
    except yaml.YAMLError as err:
        raise JudgeError(name, reason=f"its front matter is not YAML ({err})", hint="fix the front matter") from None
    if not isinstance(meta, dict):
        raise JudgeError(name, reason="its front matter is not a mapping", hint="write key: value lines")
    return meta, body


def parse_rubric(text: str, name: str, *, concept: str | None = None) -> Rubric:
    """A rubric from a template's text.

    Raises:
        JudgeError: no ``{completion}`` slot, an unknown verdict or set, a ``{concept}`` slot without ``--concept``.
    """
    meta, body = _split_front_matter(text, name)
    if "{completion}" not in body:
        raise JudgeError(
            name, reason="the template has no {completion} slot", hint="write {completion} where the answer goes"
        )
    verdict = str(meta.get("verdict", "score"))
    if verdict not in VERDICTS:
        raise JudgeError(name, reason=f"unknown verdict {verdict!r}", hint=f"use one of {', '.join(VERDICTS)}")
    sets = tuple(meta.get("sets") or (("positive", "negative") if verdict == "yesno" else ("eval",)))
    if any(s not in SETS for s in sets):
        raise JudgeError(name, reason=f"unknown sets {list(sets)}", hint=f"use a subset of {', '.join(SETS)}")
    ratings = tuple(str(r) for r in meta.get("ratings") or ())
    if verdict == "ratings" and not ratings:
        raise JudgeError(name, reason="a ratings verdict names no ratings", hint="add e.g. ratings: [concept, fluency]")
    if "{concept}" in body and not concept:
        raise JudgeError(
            name,
            reason="the rubric rates a concept and none was given",
            hint='pass --concept "what the steering aims at"',
        )
    try:
        low, high = float(meta.get("low", 0)), float(meta.get("high", 10 if verdict == "score" else 1))
    except (TypeError, ValueError):
        raise JudgeError(name, reason="low and high must be numbers", hint="e.g. low: 0, high: 10") from None
    return Rubric(
        name=name,
        template=body,
        verdict=verdict,
        ratings=ratings,
        low=low,
        high=high,
        sets=sets,
        description=str(meta.get("description", "")),
        concept=concept if "{concept}" in body else None,
    )


def load_rubric(spec: str | Path, *, concept: str | None = None) -> Rubric:
    """The shipped rubric called ``spec`` (:data:`RUBRICS`), or a template file.

    Raises:
        JudgeError: an unknown name, a file that cannot be read, or a template :func:`parse_rubric` refuses.
    """
    name = str(spec)
    if name in RUBRICS:
        text = resources.files("bakesteer.data").joinpath(f"rubric_{name}.txt").read_text(encoding="utf-8")
        return parse_rubric(text, name, concept=concept)
    path = Path(spec)
    if not path.is_file():
        raise JudgeError(
            path.name,
            reason="no such rubric",
            hint=f"use {' or '.join(RUBRICS)}, or a template file with a {{completion}} slot",
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise JudgeError(path.name, reason=f"cannot read it ({err})", hint="pass a UTF-8 text file") from None
    return parse_rubric(text, path.name, concept=concept)


# --------------------------------------------------------------------------- the cache


def cache_dir() -> Path:
    """``$BAKESTEER_CACHE``, else ``$XDG_CACHE_HOME/bakesteer``, else ``~/.cache/bakesteer``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "bakesteer"


class ReplyCache:
    """Judge replies on disk (SQLite), keyed by (judge, rubric hash, prompt, completion, reply length)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or cache_dir() / "judgments.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path)
        self._db.execute("CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, reply TEXT NOT NULL)")

    @staticmethod
    def key(judge: dict[str, Any], rubric: Rubric, prompt: str, completion: str) -> str:
        spec = [judge, rubric.sha256, prompt, completion]
        return hashlib.sha256(json.dumps(spec, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    def get(self, keys: Sequence[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for start in range(0, len(keys), 500):
            chunk = list(keys[start : start + 500])
            marks = ",".join("?" * len(chunk))
            out.update(self._db.execute(f"SELECT key, reply FROM replies WHERE key IN ({marks})", chunk).fetchall())
        return out

    def put(self, items: dict[str, str]) -> None:
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO replies VALUES (?, ?)", items.items())

    def close(self) -> None:
        self._db.close()


# --------------------------------------------------------------------------- judges


@dataclass(frozen=True)
class Reply:
    """A judge's reply to one request: its text, or why there is none."""

    text: str | None
    error: str | None = None


class Judge(Protocol):
    """Anything that answers rendered rubric texts."""

    #: What the cache and the record know the judge by (never a key or a URL).
    identity: dict[str, Any]

    def replies(self, requests: Sequence[str]) -> list[Reply]: ...

    def close(self) -> None: ...


def api_base(url: str) -> str:
    """The client's base URL: ``/v1`` is added to a URL with no path."""
    parts = urlsplit(url)
    path = parts.path.rstrip("/") or "/v1"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


class HttpJudge:
    """A judge behind an OpenAI-compatible chat-completions server.

    Requests are greedy (``temperature=0``), run ``concurrency`` at a time, each with a finite ``timeout``; the
    client retries connection errors, timeouts, 408, 409, 429 and 5xx ``retries`` times with exponential backoff
    (honouring ``Retry-After``).

    Raises:
        JudgeError: at construction, when the server cannot be reached, refuses the key, or does not serve ``model``.
    """

    def __init__(
        self,
        url: str,
        *,
        model: str | None = None,
        concurrency: int = 8,
        timeout: float = 60.0,
        retries: int = 4,
        max_tokens: int = MAX_TOKENS,
    ) -> None:
        import openai

        self.where = public_url(url)
        self.concurrency = concurrency
        self.max_tokens = max_tokens
        self._openai = openai
        self.client = openai.OpenAI(
            base_url=api_base(url), api_key=os.environ.get(KEY_ENV) or "none", timeout=timeout, max_retries=retries
        )
        self.model = self._served_model(model)
        self.identity = {"kind": "server", "model": self.model}

    def _served_model(self, model: str | None) -> str:
        openai = self._openai
        hint_key = f"set {KEY_ENV} to the server's key"
        try:
            ids = [m.id for m in self.client.with_options(max_retries=0).models.list()]
        except openai.AuthenticationError:
            raise JudgeError(self.where, reason="the server refused the key (401)", hint=hint_key) from None
        except openai.PermissionDeniedError:
            raise JudgeError(self.where, reason="the server denied access (403)", hint=hint_key) from None
        except openai.APITimeoutError:
            raise JudgeError(
                self.where, reason="the server did not answer /v1/models in time", hint="check it is up and serving"
            ) from None
        except openai.APIConnectionError as err:
            cause = err.__cause__ or err
            raise JudgeError(
                self.where,
                reason=f"cannot reach the server ({type(cause).__name__}: {cause})",
                hint="start the judge server, or fix --judge",
            ) from None
        except openai.APIStatusError as err:
            raise JudgeError(
                self.where,
                reason=f"/v1/models answered {err.status_code}",
                hint="pass an OpenAI-compatible server's URL (e.g. http://127.0.0.1:8000/v1)",
            ) from None
        except openai.OpenAIError as err:
            raise JudgeError(self.where, reason=f"/v1/models is not readable ({err})", hint="check the URL") from None
        if model is None:
            if not ids:
                raise JudgeError(self.where, reason="the server lists no model", hint="pass --judge-model")
            return ids[0]
        if model not in ids:
            raise JudgeError(
                self.where,
                reason=f"it does not serve {model!r} (it serves {', '.join(ids[:8]) or 'nothing'})",
                hint="pass one of those as --judge-model",
            )
        return model

    def _one(self, text: str) -> Reply:
        openai = self._openai
        try:
            response = self.client.chat.completions.create(
                model=self.model,
                messages=[{"role": "user", "content": text}],
                temperature=0,
                max_tokens=self.max_tokens,
            )
        except openai.APITimeoutError:
            return Reply(None, "timed out")
        except openai.APIConnectionError as err:
            return Reply(None, f"connection failed ({type(err.__cause__ or err).__name__})")
        except openai.APIStatusError as err:
            return Reply(None, f"HTTP {err.status_code}")
        except (openai.OpenAIError, ValueError) as err:
            return Reply(None, f"malformed response ({type(err).__name__})")
        choices = getattr(response, "choices", None)
        if not choices or getattr(choices[0], "message", None) is None:
            return Reply(None, "malformed response (no choices)")
        return Reply(choices[0].message.content or "")

    def replies(self, requests: Sequence[str]) -> list[Reply]:
        """One reply per request, in order; ``concurrency`` requests in flight at most."""
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(self._one, requests))

    def close(self) -> None:
        self.client.close()


class LocalJudge:
    """A local transformers chat model answering greedily, in batches (its chat template applied)."""

    def __init__(self, model: str, options: Any, *, max_tokens: int = MAX_TOKENS) -> None:
        from bakesteer.dtypes import DTYPES
        from bakesteer.placement import load_model, placement_from
        from bakesteer.source import resolve_source

        source = resolve_source(model)
        self.source = source
        dtype = DTYPES["float32" if options.dtype == "auto" else options.dtype]
        self.model, self.tokenizer = load_model(source, dtype, placement_from(options))
        self.batch_size = options.generation_batch_size
        self.max_tokens = max_tokens
        described = source.describe()
        self.identity = {"kind": "local", "model": described["model_id"], "revision": described.get("revision")}

    def replies(self, requests: Sequence[str]) -> list[Reply]:
        from bakesteer.batching import pad_token_id
        from bakesteer.measure import eos_token_ids, greedy_completions
        from bakesteer.prompts import render_prompts

        ids = render_prompts(self.tokenizer, list(requests), chat_template=True)
        out = greedy_completions(
            self.model,
            ids,
            max_new_tokens=self.max_tokens,
            batch_size=self.batch_size,
            pad_id=pad_token_id(self.tokenizer),
            eos_ids=eos_token_ids(self.model, self.tokenizer),
        )
        return [Reply(self.tokenizer.decode(c, skip_special_tokens=True).strip()) for c in out]

    def close(self) -> None:
        from bakesteer.placement import free_memory

        del self.model
        free_memory()


@dataclass(frozen=True)
class JudgeSpec:
    """How to reach a judge and what it rates (from ``--judge`` and its options)."""

    target: str
    rubric: Rubric
    model: str | None = None
    concurrency: int = 8
    timeout: float = 60.0
    max_tokens: int = MAX_TOKENS

    @classmethod
    def from_options(cls, options: Any) -> JudgeSpec | None:
        """The spec of ``options.judge`` (``None`` without a judge).

        Raises:
            JudgeError: a rubric that cannot be used.
        """
        if not options.judge:
            return None
        return cls(
            target=options.judge,
            rubric=load_rubric(options.rubric, concept=options.concept),
            model=options.judge_model,
            concurrency=options.judge_concurrency,
            timeout=options.judge_timeout,
        )

    def describe(self, identity: dict[str, Any]) -> dict[str, Any]:
        """The judge as ``bakesteer.json``, ``sweep.json`` and the card record it."""
        return {**identity, "rubric": self.rubric.identity(), "max_tokens": self.max_tokens}


@contextlib.contextmanager
def open_judge(spec: JudgeSpec, options: Any) -> Iterator[Judge]:
    """The judge of ``spec``, connected (a server) or loaded (a local model), closed on exit."""
    judge: Judge
    if is_url(spec.target):
        judge = HttpJudge(
            spec.target,
            model=spec.model,
            concurrency=spec.concurrency,
            timeout=spec.timeout,
            max_tokens=spec.max_tokens,
        )
    else:
        judge = LocalJudge(spec.target, options, max_tokens=spec.max_tokens)
    try:
        yield judge
    finally:
        judge.close()


def check_reachable(spec: JudgeSpec) -> None:
    """Before any generation: a server judge answers ``/v1/models`` with the model (a local one is checked when
    loaded).

    Raises:
        JudgeError: unreachable, 401, unknown model.
    """
    if is_url(spec.target):
        HttpJudge(spec.target, model=spec.model, timeout=spec.timeout).close()


# --------------------------------------------------------------------------- judging samples


@dataclass
class Judgments:
    """Every sample's verdict and what they add up to per prompt group."""

    verdicts: list[dict[str, Any]] = field(default_factory=list)

    def metrics(self, rubric: Rubric) -> dict[str, Any]:
        """``{"score": {set: mean}, <rating>: {set: mean}, "judged", "unparseable", "failed"}``."""
        out: dict[str, Any] = {"rubric": rubric.name}
        names = ["score", *rubric.ratings]
        for name in names:
            out[name] = {}
            for group in rubric.sets:
                values = [v["verdict"][name] for v in self.verdicts if v["set"] == group and v["verdict"]]
                out[name][group] = sum(values) / len(values) if values else None
        out["judged"] = sum(1 for v in self.verdicts if v["verdict"])
        out["unparseable"] = sum(1 for v in self.verdicts if v["verdict"] is None and v["error"] is None)
        out["failed"] = sum(1 for v in self.verdicts if v["error"] is not None)
        return out


def judge_samples(
    judge: Judge, rubric: Rubric, samples: Sequence[dict[str, str]], cache: ReplyCache | None
) -> Judgments:
    """Judge the samples of the rubric's sets (cached replies are reused; new ones are cached).

    Raises:
        JudgeError: every request failed (the judge is gone).
    """
    chosen = [s for s in samples if s["set"] in rubric.sets]
    keys = [ReplyCache.key(judge.identity, rubric, s["prompt"], s["completion"]) for s in chosen]
    cached = cache.get(keys) if cache else {}
    todo = [i for i, k in enumerate(keys) if k not in cached]
    fresh = judge.replies([rubric.render(chosen[i]["prompt"], chosen[i]["completion"]) for i in todo]) if todo else []
    if todo and all(r.text is None for r in fresh):
        raise JudgeError(
            str(judge.identity.get("model")),
            reason=f"no request was answered ({fresh[0].error})",
            hint="check the judge server, or raise --judge-timeout",
        )
    replies = {k: Reply(v) for k, v in cached.items()}
    new: dict[str, str] = {}
    for i, reply in zip(todo, fresh, strict=True):
        replies[keys[i]] = reply
        if reply.text is not None:
            new[keys[i]] = reply.text
    if cache and new:
        cache.put(new)
    logger.info("judged %d samples (%d cached)", len(chosen), len(chosen) - len(todo))
    verdicts = []
    for sample, key in zip(chosen, keys, strict=True):
        reply = replies[key]
        verdict = rubric.parse(reply.text) if reply.text is not None else None
        verdicts.append(
            {
                "set": sample["set"],
                "prompt": sample["prompt"],
                "reply": reply.text,
                "verdict": verdict,
                "error": reply.error,
            }
        )
    return Judgments(verdicts)


def harmonic_mean(values: Sequence[float]) -> float:
    """AxBench's combination: 0 when any value is 0."""
    return 0.0 if min(values) == 0 else len(values) / math.fsum(1 / v for v in values)


def judge_runs(
    spec: JudgeSpec, options: Any, runs: Sequence[tuple[dict[str, Any], list[dict[str, Any]]]]
) -> dict[str, Any]:
    """Judge every run's samples: each run's metrics get ``judge`` (:meth:`Judgments.metrics`) and each judged
    sample its ``judge`` reply and verdict. A run shared by two modes (k = 0) is judged once.

    Returns:
        The judge's record (:meth:`JudgeSpec.describe`).

    Raises:
        JudgeError: the judge cannot be reached, loaded, or answers nothing.
    """
    cache = ReplyCache()
    try:
        with open_judge(spec, options) as judge:
            for metrics, samples in runs:
                if "judge" in metrics:
                    continue
                judgments = judge_samples(judge, spec.rubric, samples, cache)
                metrics["judge"] = judgments.metrics(spec.rubric)
                chosen = (s for s in samples if s["set"] in spec.rubric.sets)
                for sample, verdict in zip(chosen, judgments.verdicts, strict=True):
                    sample["judge"] = {k: verdict[k] for k in ("reply", "verdict", "error")}
            return spec.describe(judge.identity)
    finally:
        cache.close()
