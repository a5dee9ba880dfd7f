"""Measure what steering does and choose ``k``: ``sweep`` (hooks on one loaded model), ``evaluate`` (a written
checkpoint against its base), and the ``--alpha auto`` rule.

A sweep loads the model once, calibrates once (or reuses ``--vector``), measures the unsteered base once, then, for
every ``k`` and steering mode, steers with hooks and measures again (:mod:`bakesteer.measure` holds the recipes).
``k = 0`` is the base itself in both modes, so it is measured once. Last-token steering reads the reference text as
generated tokens, each of which it steers, so its perplexity is the broadcast run's and is not measured twice.

With ``--baseline-prompt`` the unsteered base also answers after that system prompt (mode ``prompted``, k = 0).
With ``--judge`` every run's samples are judged after the measured model is freed (:mod:`bakesteer.judge`). A sweep
reports each run's cumulative relative *dose* (band length x |k| / sqrt(d_model)) and the *window*: the k on each side
at which the effect is present (judged, else the concept score, past :data:`EFFECT_THRESHOLDS`) and coherence holds.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import bakesteer.degeneration as degeneration
from bakesteer.architectures import ArchitectureSpec
from bakesteer.errors import EvaluationError, OptionError
from bakesteer.hooks import STEERING_MODES, steering
from bakesteer.measure import (
    BaseReading,
    ConceptProbe,
    EvalInputs,
    RunOutputs,
    base_reading,
    concept_probe,
    eos_token_ids,
    prepare_inputs,
    run_metrics,
    run_outputs,
    run_samples,
)
from bakesteer.metric_table import METRICS
from bakesteer.options import ConvertOptions
from bakesteer.progress import bar
from bakesteer.prompts import PromptSet, baseline_text, load_prompt_set, reference_text
from bakesteer.record import SWEEP_PLOT
from bakesteer.vector import SteeringVector
from bakesteer.version import __version__

logger = logging.getLogger(__name__)

DEFAULT_ALPHAS: tuple[float, ...] = (-1.0, -0.5, 0.0, 0.5, 1.0)
#: ``--alpha auto`` tries these |k| in increasing order, on the side of ``--direction``.
AUTO_GRID: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
#: ``--alpha auto`` keeps a k while its fluency (base perplexity of its eval completions) is at most this multiple
#: of k = 0's ...
AUTO_MAX_FLUENCY_RATIO = 2.0
#: ... and its share of repeated 4-grams is at most k = 0's plus this (and the degeneration gate does not flag it).
AUTO_MAX_REPETITION_INCREASE = 0.1
#: The effect a window and a judged ``--alpha auto`` read, by what measured it: the key in a run's metrics and how
#: far past k = 0's value (in the direction of k's sign) it must be. The concept score's anchors are 1 apart; judged
#: concept ratings run 0-2; a judged refusal rate 0-1.
EFFECT_THRESHOLDS = {
    "concept": 0.5,
    "judge.concept.eval": 0.5,
    "judge.score.positive": 0.25,
    "judge.score.eval": 0.25,
}
PROMPTED = "prompted"
SWEEP_FILE = "sweep.json"
SWEEP_CSV = "sweep.csv"
LAYERS_PLOT = "layers.png"
CSV_COLUMNS = ("alpha", "mode", *(m.column for m in METRICS))


@dataclass
class SweepRun:
    """One ``(k, mode)`` of a sweep: its metrics and every completion."""

    alpha: float
    mode: str
    metrics: dict[str, Any]
    samples: list[dict[str, Any]]
    dose: float | None = None

    def to_dict(self, *, samples: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {"alpha": self.alpha, "mode": self.mode, "metrics": self.metrics}
        if self.dose is not None:
            out["dose"] = self.dose
        if samples:
            out["samples"] = self.samples
        return out


@dataclass
class SweepResult:
    """A sweep: the band, direction quality by layer, and every run.

    Attributes:
        model: The model as named by the caller (a Hub id, or a directory's or file's name: no local path).
        band: ``(start, end)``, end excluded.
        mu: ``mu_l`` for every layer.
        auroc: AUROC of the held-out positive vs negative last-token residuals projected on ``c_l`` (``None`` where
            the direction is degenerate).
        runs: One per ``(k, mode)``, in the order of the alphas, then of the modes.
        concept: The concept score's layer and anchors.
        eval_set: The eval prompts' description (name, hash, count).
        settings: Generation length and the prompt sets' descriptions.
        seconds: Wall time of the measurements.
        judge: The judge's identity and rubric, when one judged the samples.
    """

    model: str
    band: tuple[int, int]
    mu: list[float]
    auroc: list[float | None]
    runs: list[SweepRun]
    concept: dict[str, Any]
    eval_set: dict[str, Any]
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    judge: dict[str, Any] | None = None

    def run(self, alpha: float, mode: str = "broadcast") -> SweepRun:
        """The run at ``alpha`` and ``mode``.

        Raises:
            KeyError: when the sweep has no such run.
        """
        for run in self.runs:
            if run.alpha == alpha and run.mode == mode:
                return run
        raise KeyError((alpha, mode))

    def to_dict(self, *, samples: bool = True) -> dict[str, Any]:
        """The ``sweep.json`` record (see the README for its schema)."""
        return {
            "model": self.model,
            "bakesteer_version": __version__,
            "band": list(self.band),
            "mu": self.mu,
            "auroc": self.auroc,
            "concept": self.concept,
            "eval_set": self.eval_set,
            "settings": self.settings,
            "judge": self.judge,
            "degeneration": degeneration.rule() if self.settings.get("long_prompts") else None,
            "window": window(self.runs, self.judge),
            "runs": [run.to_dict(samples=samples) for run in self.runs],
        }

    def csv(self) -> str:
        """One row per run, the columns of :data:`CSV_COLUMNS`."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for run in self.runs:
            writer.writerow([run.alpha, run.mode, *(m.raw(run.metrics) for m in METRICS)])
        return buffer.getvalue()

    def write(self, directory: Path, *, chosen: float | None = None) -> None:
        """Write ``sweep.json``, ``sweep.csv``, ``sweep.png`` (metrics against k) and ``layers.png`` (mu and AUROC)."""
        from bakesteer.plots import plot_layers, plot_sweep

        directory = Path(directory)
        (directory / SWEEP_FILE).write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")
        (directory / SWEEP_CSV).write_text(self.csv())
        runs = [run.to_dict(samples=False) for run in self.runs]
        (directory / SWEEP_PLOT).write_bytes(plot_sweep(runs, chosen=chosen))
        (directory / LAYERS_PLOT).write_bytes(plot_layers(self.mu, self.auroc, self.band))


# --------------------------------------------------------------------------- inputs


def measurement_inputs(
    tokenizer: Any, model: Any, options: ConvertOptions, positive: PromptSet, negative: PromptSet
) -> EvalInputs:
    """Everything a run is asked, tokenised: the eval prompts of ``options``, the held-out parts of both sets, the
    reference text and the concept anchors."""
    from bakesteer.batching import pad_token_id

    config = model.config.get_text_config()
    return prepare_inputs(
        tokenizer,
        positive=positive,
        negative=negative,
        eval_set=load_prompt_set(options.eval_prompts, "eval"),
        reference_text=reference_text(),
        chat_template=options.chat_template,
        eos_ids=eos_token_ids(model, tokenizer),
        pad_id=pad_token_id(tokenizer),
        max_positions=getattr(config, "max_position_embeddings", None),
        long=options.long_prompts,
        baseline_prompt=baseline_text(options.baseline_prompt) if options.baseline_prompt else None,
    )


def direction_auroc(
    model: Any, spec: ArchitectureSpec, inputs: EvalInputs, directions: torch.Tensor, *, batch_size: int
) -> list[float | None]:
    """Per layer: AUROC of the held-out positive vs negative last-token residuals projected on ``c_l``."""
    from bakesteer.calibration import sequence_residuals
    from bakesteer.metrics import auroc

    layers = list(range(directions.shape[0]))
    pos, neg = (
        sequence_residuals(
            model, spec, inputs.ids[role], layers=layers, reduce="last", batch_size=batch_size, pad_id=inputs.pad_id
        )
        for role in ("positive", "negative")
    )
    out: list[float | None] = []
    for layer in layers:
        direction = directions[layer].double()
        if not bool(direction.abs().sum() > 0):
            out.append(None)
            continue
        out.append(auroc(pos[:, layer] @ direction, neg[:, layer] @ direction))
    return out


# --------------------------------------------------------------------------- the sweep on a loaded model


class _Measurer:
    """The base model and what it measured once: its own run and the concept probe."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        spec: ArchitectureSpec,
        inputs: EvalInputs,
        vector: SteeringVector,
        band: tuple[int, int],
        options: ConvertOptions,
    ) -> None:
        self.model, self.tokenizer, self.spec, self.inputs, self.options = model, tokenizer, spec, inputs, options
        self.vector, self.band = vector, band
        self.probe: ConceptProbe = concept_probe(
            model, spec, inputs, vector.directions, band, batch_size=options.batch_size
        )
        self.base: RunOutputs = run_outputs(model, tokenizer, inputs, options)
        self.base_run = self.measure(self.base)

    def measure(self, run: RunOutputs) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        reading: BaseReading = base_reading(
            self.model, self.spec, self.tokenizer, self.inputs, run, self.probe, batch_size=self.options.batch_size
        )
        return run_metrics(self.base, run, reading, self.inputs), run_samples(self.inputs, run)

    def prompted(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The unsteered base answering after the baseline system prompt, measured like any run."""
        inputs = self.inputs.with_baseline()
        outputs = run_outputs(
            self.model, self.tokenizer, inputs, self.options, reference_perplexity=self.base.perplexity
        )
        return self.measure(outputs)  # read after the plain prompt, like every other run

    def steered(self, offsets: torch.Tensor, mode: str, *, reference_perplexity: float | None) -> RunOutputs:
        with steering(self.model, self.spec, offsets, mode=mode):
            return run_outputs(
                self.model, self.tokenizer, self.inputs, self.options, reference_perplexity=reference_perplexity
            )

    def broadcast(self, alpha: float) -> SweepRun:
        """One broadcast run at ``alpha``, measured."""
        outputs = self.steered(self.vector.offsets(self.band, alpha), "broadcast", reference_perplexity=None)
        metrics, samples = self.measure(outputs)
        logger.info("k=%g broadcast: %s", alpha, metrics)
        return SweepRun(alpha, "broadcast", metrics, samples, dose=relative_dose(self.band, self.vector.d_model)(alpha))


def sweep_loaded(
    model: Any,
    tokenizer: Any,
    spec: ArchitectureSpec,
    vector: SteeringVector,
    band: tuple[int, int],
    inputs: EvalInputs,
    options: ConvertOptions,
    *,
    alphas: Sequence[float],
    modes: Sequence[str],
    name: str,
) -> SweepResult:
    """Measure ``model`` unsteered and steered at every ``k`` in ``alphas`` and every mode (hooks only), and, with a
    baseline prompt, the prompted base.

    Raises:
        OptionError: an unknown mode, or no alpha.
    """
    started = time.perf_counter()
    alphas = [float(a) for a in alphas]
    modes = list(modes)
    check_grid(alphas, modes)
    measurer = _Measurer(model, tokenizer, spec, inputs, vector, band, options)
    runs: list[SweepRun] = []
    steered = [(a, m) for a in alphas if a != 0 for m in modes]
    results: dict[tuple[float, str], tuple[dict[str, Any], list[dict[str, Any]]]] = {}
    broadcast_perplexity: dict[float, float] = {}
    # broadcast first for each k, so last-token reuses its reference perplexity
    order = sorted(steered, key=lambda item: (alphas.index(item[0]), item[1] != "broadcast"))
    for alpha, mode in bar(order, desc="sweep", unit="run"):
        offsets = vector.offsets(band, alpha)
        outputs = measurer.steered(offsets, mode, reference_perplexity=broadcast_perplexity.get(alpha))
        if mode == "broadcast":
            broadcast_perplexity[alpha] = outputs.perplexity
        results[(alpha, mode)] = measurer.measure(outputs)
        logger.info("k=%g %s: %s", alpha, mode, results[(alpha, mode)][0])
    dose = relative_dose(band, vector.d_model)
    for alpha in alphas:
        for mode in modes:
            metrics, samples = measurer.base_run if alpha == 0 else results[(alpha, mode)]
            runs.append(SweepRun(alpha, mode, metrics, samples, dose=dose(alpha)))
    if inputs.prompted is not None:
        runs.append(SweepRun(0.0, PROMPTED, *measurer.prompted(), dose=0.0))
    return _result(measurer, runs, name=name, alphas=alphas, modes=modes, started=started)


def _result(
    measurer: _Measurer,
    runs: list[SweepRun],
    *,
    name: str,
    alphas: Sequence[float],
    modes: Sequence[str],
    started: float,
) -> SweepResult:
    options, vector, band = measurer.options, measurer.vector, measurer.band
    auroc = direction_auroc(
        measurer.model, measurer.spec, measurer.inputs, vector.directions, batch_size=options.batch_size
    )
    return SweepResult(
        model=name,
        band=band,
        mu=[round(float(m), 6) for m in vector.mu],
        auroc=auroc,
        runs=runs,
        concept=measurer.probe.to_dict(),
        eval_set=measurer.inputs.eval_set,
        settings={
            "max_new_tokens": options.max_new_tokens,
            "chat_template": options.chat_template,
            "positive": vector.info.get("positive"),
            "negative": vector.info.get("negative"),
            "alphas": list(alphas),
            "modes": list(modes),
            "long_prompts": measurer.inputs.long,
            "long_tokens": options.long_tokens,
            "baseline_prompt": baseline_text(options.baseline_prompt) if options.baseline_prompt else None,
        },
        seconds=round(time.perf_counter() - started, 3),
    )


def relative_dose(band: tuple[int, int], d_model: int) -> Any:
    """``k -> band length x |k| / sqrt(d_model)``: the cumulative relative dose of steering at ``k``."""
    length = band[1] - band[0]
    return lambda alpha: round(length * abs(alpha) / math.sqrt(d_model), 6)


# --------------------------------------------------------------------------- effect, coherence, window


def effect_key(judge: dict[str, Any] | None) -> str:
    """What the effect is read from: the judge's concept rating (concept rubric), its score on the positive prompts
    (a yes/no rubric, e.g. refusal), its eval score (any other rubric), else the concept score."""
    if not judge:
        return "concept"
    rubric = judge["rubric"]
    if rubric["verdict"] == "ratings" and "concept" in rubric.get("ratings", ["concept"]):
        return "judge.concept.eval"
    return "judge.score.positive" if rubric["verdict"] == "yesno" else "judge.score.eval"


def readable_effect_key(judge: dict[str, Any] | None, base: dict[str, Any]) -> str:
    """:func:`effect_key`, or the concept score when the judge read nothing at k = 0 (every reply unparseable)."""
    key = effect_key(judge)
    return key if effect(base, base, 1.0, key) is not None else "concept"


def effect(run: dict[str, Any], base: dict[str, Any], alpha: float, key: str) -> float | None:
    """How far ``key`` moved from k = 0's value in the direction of ``alpha``'s sign (``None`` when unmeasured)."""
    from bakesteer.metric_table import Metric

    read = Metric(key, "", "", "", "", "", None)
    now, then = read.raw(run), read.raw(base)
    if now is None or then is None:
        return None
    return math.copysign(1.0, alpha) * (float(now) - float(then))


def _drift(run: dict[str, Any], base: dict[str, Any]) -> tuple[float, float]:
    """Fluency as a multiple of k = 0's (inf when unmeasured) and repetition above k = 0's."""
    ratio = run["fluency"] / base["fluency"] if run["fluency"] is not None and base["fluency"] else math.inf
    return ratio, run["repetition"] - base["repetition"]


def incoherence(run: dict[str, Any], base: dict[str, Any]) -> list[str]:
    """Why a run is not coherent, against k = 0: fluency, repetition, or the degeneration gate (empty: coherent)."""
    ratio, increase = _drift(run, base)
    reasons = []
    if ratio > AUTO_MAX_FLUENCY_RATIO:
        reasons.append(f"fluency {ratio:.3g}x k=0's")
    if increase > AUTO_MAX_REPETITION_INCREASE:
        reasons.append(f"repetition +{increase:.3g}")
    degenerate = run.get("degenerate")
    if degenerate and degenerate.get("flagged"):
        reasons.append(f"degenerate ({degenerate['rate']:.0%} of long answers)")
    return reasons


def window(runs: Sequence[SweepRun], judge: dict[str, Any] | None) -> dict[str, Any] | None:
    """The k of the broadcast runs at which the effect is present and coherence holds, on each side of 0, with their
    doses (``None`` without a k = 0 broadcast run)."""
    broadcast = {r.alpha: r for r in runs if r.mode == "broadcast"}
    if 0.0 not in broadcast:
        return None
    base = broadcast[0.0].metrics
    key = readable_effect_key(judge, base)
    threshold = EFFECT_THRESHOLDS[key]
    out: dict[str, Any] = {"effect": key, "threshold": threshold, "coherence": auto_rule()["coherence"]}
    for side, sign in (("positive", 1.0), ("negative", -1.0)):
        inside = []
        for alpha in sorted((a for a in broadcast if a * sign > 0), key=abs):
            moved = effect(broadcast[alpha].metrics, base, alpha, key)
            if moved is not None and moved >= threshold and not incoherence(broadcast[alpha].metrics, base):
                inside.append(alpha)
        doses = [float(broadcast[a].dose or 0.0) for a in inside]
        out[side] = (
            {"alphas": inside, "k": [min(inside, key=abs), max(inside, key=abs)], "dose": [min(doses), max(doses)]}
            if inside
            else None
        )
    return out


def check_grid(alphas: Sequence[float], modes: Sequence[str]) -> None:
    """Refuse an empty or repeated alpha list, a non-finite alpha, or an unknown mode.

    Raises:
        OptionError: naming the flag.
    """
    if not alphas:
        raise OptionError("--alphas", "", reason="no value", hint="pass e.g. --alphas=-1,-0.5,0,0.5,1")
    if any(not math.isfinite(a) for a in alphas) or len(set(alphas)) != len(alphas):
        raise OptionError(
            "--alphas", ",".join(map(str, alphas)), reason="must be distinct finite numbers", hint="list each k once"
        )
    unknown = [m for m in modes if m not in STEERING_MODES]
    if unknown or not modes or len(set(modes)) != len(modes):
        raise OptionError(
            "--modes",
            ",".join(modes),
            reason="unknown, repeated or no mode",
            hint=f"use a comma-separated subset of {','.join(STEERING_MODES)}",
        )


# --------------------------------------------------------------------------- --alpha auto


def auto_rule(judge: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``--alpha auto`` rule, as recorded in ``bakesteer.json`` (the objective depends on whether a judge is
    given)."""
    coherence = (
        f"fluency <= {AUTO_MAX_FLUENCY_RATIO:g} x fluency(k=0), repetition <= repetition(k=0) + "
        f"{AUTO_MAX_REPETITION_INCREASE:g}, and not flagged by the degeneration gate"
    )
    objective = f"the largest judged effect ({effect_key(judge)})" if judge else "the strongest k kept"
    return {
        "grid": list(AUTO_GRID),
        "mode": "broadcast",
        "max_fluency_ratio": AUTO_MAX_FLUENCY_RATIO,
        "max_repetition_increase": AUTO_MAX_REPETITION_INCREASE,
        "coherence": coherence,
        "objective": "judge" if judge else "strongest",
        "text": (
            f"walk the grid up from the weakest k while {coherence}; stop at the first k that breaks it (no stronger "
            f"k is run) and bisect once between the last k kept and that one; choose {objective}"
        ),
    }


def auto_alphas(direction: str) -> list[float]:
    """``0`` then the grid on the side of ``direction`` (``positive``: k > 0)."""
    sign = 1.0 if direction == "positive" else -1.0
    return [0.0, *(sign * a for a in AUTO_GRID)]


def _decision(run: SweepRun, base: dict[str, Any], *, bisect: bool = False) -> dict[str, Any]:
    m = run.metrics
    reasons = incoherence(m, base)
    ratio, increase = _drift(m, base)
    return {
        "alpha": run.alpha,
        "fluency_ratio": ratio,
        "repetition_increase": increase,
        "degenerate_rate": (m.get("degenerate") or {}).get("rate"),
        "kept": not reasons,
        "why_not": "; ".join(reasons),
        "bisect": bisect,
    }


def walk_grid(
    measure: Callable[[float], SweepRun], base: dict[str, Any], grid: Sequence[float]
) -> tuple[list[SweepRun], list[dict[str, Any]]]:
    """Measure ``grid`` (weakest first) until the first k that is not coherent against ``base`` (k = 0's metrics);
    no stronger k is measured. Then measure once between the last k kept (or 0) and that one.

    Returns:
        The runs and one decision per run, in the order measured.
    """
    runs: list[SweepRun] = []
    decisions: list[dict[str, Any]] = []
    last_kept, rejected = 0.0, None
    for alpha in bar(list(grid), desc="alpha auto", unit="run"):
        runs.append(measure(alpha))
        decisions.append(_decision(runs[-1], base))
        if not decisions[-1]["kept"]:
            rejected = alpha
            break
        last_kept = alpha
    if rejected is not None:
        runs.append(measure(round((last_kept + rejected) / 2, 6)))
        decisions.append(_decision(runs[-1], base, bisect=True))
    return runs, decisions


def auto_sweep(
    model: Any,
    tokenizer: Any,
    spec: ArchitectureSpec,
    vector: SteeringVector,
    band: tuple[int, int],
    inputs: EvalInputs,
    options: ConvertOptions,
) -> tuple[SweepResult, list[dict[str, Any]]]:
    """``--alpha auto``'s runs: k = 0, then the grid on ``options.direction``'s side from the weakest k, stopping at
    the first k that is not coherent, then one bisection between the last k kept (or 0) and that one.

    Returns:
        The runs (k = 0 first, in the order run) and one decision per steered run.
    """
    started = time.perf_counter()
    measurer = _Measurer(model, tokenizer, spec, inputs, vector, band, options)
    base = SweepRun(0.0, "broadcast", *measurer.base_run, dose=0.0)
    steered, decisions = walk_grid(measurer.broadcast, base.metrics, auto_alphas(options.direction)[1:])
    runs = [base, *steered]
    if inputs.prompted is not None:
        runs.append(SweepRun(0.0, PROMPTED, *measurer.prompted(), dose=0.0))
    alphas = [r.alpha for r in runs if r.mode == "broadcast"]
    return _result(measurer, runs, name="", alphas=alphas, modes=["broadcast"], started=started), decisions


def choose_alpha(result: SweepResult, decisions: list[dict[str, Any]], judge: dict[str, Any] | None = None) -> float:
    """The k ``--alpha auto`` chooses among the kept runs: the strongest, or, with a judge, the one with the largest
    judged effect (the weaker of equals).

    Raises:
        EvaluationError: when no k was kept.
    """
    kept = [d["alpha"] for d in decisions if d["kept"]]
    if not kept:
        first = decisions[0]
        raise EvaluationError(
            "--alpha auto",
            reason=f"no k stays coherent (k = {first['alpha']:g}: {first['why_not']})",
            hint="pass an explicit --alpha, or look at `bakesteer sweep` for this model",
        )
    base = result.run(0.0).metrics
    if judge is None or readable_effect_key(judge, base) == "concept":  # no judge, or one that read nothing
        return max(kept, key=abs)
    key = effect_key(judge)

    def score(alpha: float) -> tuple[float, float]:
        moved = effect(result.run(alpha).metrics, base, alpha, key)
        return (-math.inf if moved is None else moved, -abs(alpha))

    return max(kept, key=score)


# --------------------------------------------------------------------------- the library entry points


def sweep(
    model: str,
    output: Path,
    options: ConvertOptions | None = None,
    *,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    modes: Sequence[str] = STEERING_MODES,
) -> SweepResult:
    """Load ``model`` once, calibrate once (or reuse ``options.vector``), and measure it steered by hooks at every
    ``k`` and mode. Writes ``sweep.json``, ``sweep.csv`` and the plots into ``output`` (nothing else).

    Raises:
        BakesteerError: any bad input (see :mod:`bakesteer.errors`).
    """
    from bakesteer.judge import JudgeSpec, check_reachable, judge_runs
    from bakesteer.loading import load_for_measurement
    from bakesteer.writer import AtomicDirectory

    options = options or ConvertOptions()
    check_grid([float(a) for a in alphas], list(modes))
    judge = JudgeSpec.from_options(options)
    if judge is not None:
        check_reachable(judge)  # before any generation
    with AtomicDirectory(Path(output), overwrite=options.overwrite, source=model) as staging:
        with load_for_measurement(model, options, staging.scratch, alphas=tuple(alphas)) as loaded:
            inputs = measurement_inputs(loaded.tokenizer, loaded.model, options, loaded.positive, loaded.negative)
            result = sweep_loaded(
                loaded.model,
                loaded.tokenizer,
                loaded.spec,
                loaded.vector,
                loaded.band,
                inputs,
                options,
                alphas=alphas,
                modes=modes,
                name=loaded.name,
            )
        if judge is not None:  # the measured model is freed: a local judge is the only model in memory
            result.judge = judge_runs(judge, options, [(run.metrics, run.samples) for run in result.runs])
        result.write(staging.path)
        staging.commit()
    return result
