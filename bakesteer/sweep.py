"""Measure what steering does and choose ``k``: ``sweep`` (hooks on one loaded model), ``evaluate`` (a written
checkpoint against its base), and the ``--alpha auto`` rule.

A sweep loads the model once, calibrates once (or reuses ``--vector``), measures the unsteered base once, then, for
every ``k`` and steering mode, steers with hooks and measures again (:mod:`bakesteer.measure` holds the recipes).
``k = 0`` is the base itself in both modes, so it is measured once. Last-token steering reads the reference text as
generated tokens, each of which it steers, so its perplexity is the broadcast run's and is not measured twice.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

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
from bakesteer.prompts import PromptSet, load_prompt_set, reference_text
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
#: ... and its share of repeated 4-grams is at most k = 0's plus this.
AUTO_MAX_REPETITION_INCREASE = 0.1
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
    samples: list[dict[str, str]]

    def to_dict(self, *, samples: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {"alpha": self.alpha, "mode": self.mode, "metrics": self.metrics}
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
        self.probe: ConceptProbe = concept_probe(
            model, spec, inputs, vector.directions, band, batch_size=options.batch_size
        )
        self.base: RunOutputs = run_outputs(model, tokenizer, inputs, options)
        self.base_run = self.measure(self.base)

    def measure(self, run: RunOutputs) -> tuple[dict[str, Any], list[dict[str, str]]]:
        reading: BaseReading = base_reading(
            self.model, self.spec, self.tokenizer, self.inputs, run, self.probe, batch_size=self.options.batch_size
        )
        return run_metrics(self.base, run, reading, self.inputs), run_samples(self.inputs, run)

    def steered(self, offsets: torch.Tensor, mode: str, *, reference_perplexity: float | None) -> RunOutputs:
        with steering(self.model, self.spec, offsets, mode=mode):
            return run_outputs(
                self.model, self.tokenizer, self.inputs, self.options, reference_perplexity=reference_perplexity
            )


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
    """Measure ``model`` unsteered and steered at every ``k`` in ``alphas`` and every mode (hooks only).

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
    results: dict[tuple[float, str], tuple[dict[str, Any], list[dict[str, str]]]] = {}
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
    for alpha in alphas:
        for mode in modes:
            metrics, samples = measurer.base_run if alpha == 0 else results[(alpha, mode)]
            runs.append(SweepRun(alpha, mode, metrics, samples))
    auroc = direction_auroc(model, spec, inputs, vector.directions, batch_size=options.batch_size)
    return SweepResult(
        model=name,
        band=band,
        mu=[round(float(m), 6) for m in vector.mu],
        auroc=auroc,
        runs=runs,
        concept=measurer.probe.to_dict(),
        eval_set=inputs.eval_set,
        settings={
            "max_new_tokens": options.max_new_tokens,
            "chat_template": options.chat_template,
            "positive": vector.info.get("positive"),
            "negative": vector.info.get("negative"),
            "alphas": alphas,
            "modes": modes,
        },
        seconds=round(time.perf_counter() - started, 3),
    )


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


def auto_rule() -> dict[str, Any]:
    """The ``--alpha auto`` rule, as recorded in ``bakesteer.json``."""
    return {
        "grid": list(AUTO_GRID),
        "mode": "broadcast",
        "max_fluency_ratio": AUTO_MAX_FLUENCY_RATIO,
        "max_repetition_increase": AUTO_MAX_REPETITION_INCREASE,
        "text": (
            "walk the grid from the weakest k; keep each k while fluency <= "
            f"{AUTO_MAX_FLUENCY_RATIO:g} x fluency(k=0) and repetition <= repetition(k=0) + "
            f"{AUTO_MAX_REPETITION_INCREASE:g}; the chosen k is the last one kept"
        ),
    }


def auto_alphas(direction: str) -> list[float]:
    """``0`` then the grid on the side of ``direction`` (``positive``: k > 0)."""
    sign = 1.0 if direction == "positive" else -1.0
    return [0.0, *(sign * a for a in AUTO_GRID)]


def choose_alpha(result: SweepResult, direction: str) -> tuple[float, list[dict[str, Any]]]:
    """Apply the ``--alpha auto`` rule to a broadcast sweep over :func:`auto_alphas`.

    Returns:
        The chosen k and, per grid point, whether it was kept and why not.

    Raises:
        EvaluationError: when even the weakest k breaks a limit.
    """
    base = result.run(0.0).metrics
    base_fluency, base_repetition = base["fluency"], base["repetition"]
    chosen: float | None = None
    decisions: list[dict[str, Any]] = []
    stopped = False
    for alpha in auto_alphas(direction)[1:]:
        m = result.run(alpha).metrics
        ratio = m["fluency"] / base_fluency if m["fluency"] is not None and base_fluency else math.inf
        increase = m["repetition"] - base_repetition
        reasons = []
        if ratio > AUTO_MAX_FLUENCY_RATIO:
            reasons.append(f"fluency {ratio:.3g}x k=0's")
        if increase > AUTO_MAX_REPETITION_INCREASE:
            reasons.append(f"repetition +{increase:.3g}")
        kept = not reasons and not stopped
        if reasons:
            stopped = True
        if kept:
            chosen = alpha
        decisions.append(
            {
                "alpha": alpha,
                "fluency_ratio": ratio,
                "repetition_increase": increase,
                "kept": kept,
                "why_not": "; ".join(reasons) or ("a weaker k broke a limit" if not kept else ""),
            }
        )
    if chosen is None:
        first = decisions[0]
        raise EvaluationError(
            "--alpha auto",
            reason=f"even k = {first['alpha']:g} breaks a limit ({first['why_not']})",
            hint="pass an explicit --alpha, or look at `bakesteer sweep` for this model",
        )
    return chosen, decisions


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
    from bakesteer.loading import load_for_measurement
    from bakesteer.writer import AtomicDirectory

    options = options or ConvertOptions()
    check_grid([float(a) for a in alphas], list(modes))
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
        result.write(staging.path)
        staging.commit()
    return result
