"""``bakesteer eval``: the metrics of a written checkpoint, loaded plainly (no hooks), side by side with its base.

One model is in memory at a time: the checkpoint answers first and is freed, then the base answers and re-reads
both models' completions (fluency and the concept score are measured by the unsteered base). The recipes are
:mod:`bakesteer.measure`'s, the same as a sweep's, so ``eval`` of the checkpoint baked at ``k`` equals the broadcast
sweep run at ``k``.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bakesteer.errors import EvaluationError
from bakesteer.judge import JudgeSpec, check_reachable, judge_runs
from bakesteer.measure import base_reading, concept_probe, run_metrics, run_outputs, run_samples
from bakesteer.options import ConvertOptions
from bakesteer.placement import Placement, free_memory, load_causal_lm, placement_from
from bakesteer.prompts import PromptSet, baseline_text, load_prompt_set
from bakesteer.record import EVAL_FILE, read_output
from bakesteer.source import ModelSource
from bakesteer.vector import SteeringVector
from bakesteer.version import __version__

logger = logging.getLogger(__name__)

_KINDS = {"local": "a local directory", "gguf": "a GGUF file"}
#: Example completions per model that the card shows.
CARD_EXAMPLES = 3


@dataclass
class EvalReport:
    """The same metrics for a checkpoint (``model``) and its base.

    Attributes:
        alpha: The checkpoint's ``k``.
        band: Its band, ``(start, end)`` end excluded.
        base: The base's ``ModelSource.describe()``.
        metrics: ``{"model": {...}, "base": {...}}`` (and ``"prompted"``: the base after ``--baseline-prompt``), each
            as a sweep run's metrics.
        samples: The same keys: every prompt and completion (with the judge's reply and verdict when judged).
        concept: The concept score's layer and anchors.
        eval_set: The eval prompts' description.
        settings: Generation length, dtype, and the prompt sets.
        seconds: Wall time.
        scores: ``{"model": [...], "base": [...]}``: each eval completion's own concept score (``None`` for one too
            short to read), in eval-prompt order. Kept out of :meth:`to_dict`, which the written files hold.
    """

    alpha: float
    band: tuple[int, int]
    base: dict[str, Any]
    metrics: dict[str, dict[str, Any]]
    samples: dict[str, list[dict[str, Any]]]
    concept: dict[str, Any]
    eval_set: dict[str, Any]
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    scores: dict[str, list[float | None]] = field(default_factory=dict)
    judge: dict[str, Any] | None = None

    @property
    def degenerate(self) -> dict[str, Any] | None:
        """The checkpoint's degeneration record (``flagged`` against the base), when the gate ran."""
        return self.metrics["model"].get("degenerate")

    def to_dict(self) -> dict[str, Any]:
        """Everything, completions included (``evaluation.json``, ``eval --output``)."""
        return {
            "bakesteer_version": __version__,
            "alpha": self.alpha,
            "band": list(self.band),
            "base_model": self.base,
            "metrics": self.metrics,
            "concept": self.concept,
            "eval_set": self.eval_set,
            "settings": self.settings,
            **({"judge": self.judge} if self.judge else {}),
            "samples": self.samples,
        }

    def summary(self) -> dict[str, Any]:
        """What ``bakesteer.json`` and the card keep: the metrics and the first eval completions of each model."""
        examples = {
            who: [s for s in samples if s["set"] == "eval"][:CARD_EXAMPLES] for who, samples in self.samples.items()
        }
        return {
            "metrics": self.metrics,
            "concept": self.concept,
            "eval_set": self.eval_set,
            "settings": self.settings,
            **({"judge": self.judge} if self.judge else {}),
            "examples": examples,
            "file": EVAL_FILE,
        }


def evaluate_pair(
    directory: Path,
    base_source: ModelSource,
    *,
    vector: SteeringVector,
    band: tuple[int, int],
    positive: PromptSet,
    negative: PromptSet,
    dtype: torch.dtype,
    placement: Placement,
    trust_remote_code: bool,
    options: ConvertOptions,
    alpha: float,
) -> EvalReport:
    """Measure the checkpoint in ``directory`` (plain ``from_pretrained``) and then ``base_source``.

    Args:
        directory: A written checkpoint.
        base_source: Its base, resolved to plain local files (a GGUF source already dequantized).
        vector: The checkpoint's ``steering.safetensors`` (its directions scale the concept score).
        options: ``chat_template``, ``eval_prompts``, ``max_new_tokens``, the batch sizes.
    """
    from transformers import AutoTokenizer

    from bakesteer.architectures import spec_for
    from bakesteer.placement import load_model
    from bakesteer.source import load_config
    from bakesteer.sweep import measurement_inputs

    started = time.perf_counter()
    model = load_causal_lm(directory, dtype, placement, use_safetensors=True, trust_remote_code=trust_remote_code)
    tokenizer: Any = AutoTokenizer.from_pretrained(directory)
    tokenizer.padding_side = "left"
    inputs = measurement_inputs(tokenizer, model, options, positive, negative)
    steered = run_outputs(model, tokenizer, inputs, options)
    del model
    free_memory()

    spec = spec_for(load_config(base_source), allow_remote_code=True)
    base, _ = load_model(base_source, dtype, placement)
    try:
        runs = {"model": steered, "base": run_outputs(base, tokenizer, inputs, options)}
        if inputs.prompted is not None:
            runs["prompted"] = run_outputs(
                base, tokenizer, inputs.with_baseline(), options, reference_perplexity=runs["base"].perplexity
            )
        probe = concept_probe(base, spec, inputs, vector.directions, band, batch_size=options.batch_size)
        readings = {
            who: base_reading(base, spec, tokenizer, inputs, run, probe, batch_size=options.batch_size)
            for who, run in runs.items()
        }
    finally:
        del base
        free_memory()
    report = EvalReport(
        alpha=alpha,
        band=band,
        base=base_source.describe(),
        metrics={who: run_metrics(runs["base"], run, readings[who], inputs) for who, run in runs.items()},
        samples={who: run_samples(inputs, run) for who, run in runs.items()},
        concept=probe.to_dict(),
        eval_set=inputs.eval_set,
        settings={
            "max_new_tokens": options.max_new_tokens,
            "chat_template": options.chat_template,
            "dtype": str(dtype).removeprefix("torch."),
            "positive": positive.describe(),
            "negative": negative.describe(),
            "long_prompts": inputs.long,
            "long_tokens": options.long_tokens,
            "baseline_prompt": baseline_text(options.baseline_prompt) if options.baseline_prompt else None,
        },
        scores={who: list(reading.concept_per_sample) for who, reading in readings.items()},
    )
    judge_spec = JudgeSpec.from_options(options)
    if judge_spec is not None:  # both measured models are freed: a local judge is the only model in memory
        report.judge = judge_runs(judge_spec, options, [(report.metrics[w], report.samples[w]) for w in report.metrics])
    report.seconds = round(time.perf_counter() - started, 3)
    return report


def _prompt_set(options: ConvertOptions, role: str, recorded: dict[str, Any], directory: Path) -> PromptSet:
    """The prompt set the checkpoint was calibrated with: the option's file, or the shipped default; its hash must
    match the record."""
    path = getattr(options, role)
    name = str(recorded.get("name", ""))
    if path is None and not name.startswith("default:"):
        raise EvaluationError(
            directory.name,
            reason=f"it was calibrated with a {role} prompt set of your own ({name})",
            hint=f"pass the same file with --{role}",
        )
    prompt_set = load_prompt_set(path, role)
    if recorded.get("sha256") and prompt_set.sha256 != recorded["sha256"]:
        raise EvaluationError(
            directory.name,
            reason=f"the {role} prompt set {prompt_set.name} is not the one it was calibrated with ({name})",
            hint=f"pass the file it was calibrated with as --{role}",
        )
    return prompt_set


def evaluate(directory: Path, *, base: str | None = None, options: ConvertOptions | None = None) -> EvalReport:
    """Measure a bakesteer output against its base model.

    Args:
        directory: An output of ``bakesteer convert`` (``bakesteer.json`` and ``steering.safetensors`` inside).
        base: The base model (Hub id, directory or ``.gguf``); default: the Hub id and commit recorded, for
            checkpoints converted from the Hub.
        options: ``positive``/``negative`` (needed when the checkpoint used its own sets), ``eval_prompts``,
            ``max_new_tokens``, ``dtype`` (``auto``: the checkpoint's), ``device``, batch sizes.

    Raises:
        NotAnOutputError: not a bakesteer output.
        EvaluationError: no base known, or prompt sets that differ from the calibration's.
        BakesteerError: any other bad input.
    """
    from bakesteer.dequantize import materialize_gguf
    from bakesteer.dtypes import DTYPES
    from bakesteer.source import resolve_source

    options = options or ConvertOptions()
    directory = Path(directory)
    out = read_output(directory)
    judge = JudgeSpec.from_options(options)
    if judge is not None:
        check_reachable(judge)  # before any generation
    record = out.record
    recorded = record.base_model
    revision = None
    if base is None:
        if recorded["kind"] != "hub":
            raise EvaluationError(
                directory.name,
                reason=f"it was converted from {_KINDS.get(recorded['kind'], 'a local source')} "
                f"({recorded['model_id']}) whose path is not recorded",
                hint="pass that model with --base",
            )
        base, revision = recorded["model_id"], recorded.get("revision")
    calibration = record.calibration
    positive = _prompt_set(options, "positive", calibration.get("positive", {}), directory)
    negative = _prompt_set(options, "negative", calibration.get("negative", {}), directory)
    options = options.replace(chat_template=record.chat_template)
    vector = SteeringVector.load(out.vector_path)
    band = record.band
    dtype = DTYPES[record.dtype if options.dtype == "auto" else options.dtype]
    source = resolve_source(base, revision=revision)
    if source.revision != recorded.get("revision"):
        logger.warning(
            "the base %s (%s) is not the recorded source %s (%s)",
            source.model_id,
            source.revision,
            recorded["model_id"],
            recorded.get("revision"),
        )
    with tempfile.TemporaryDirectory(prefix=".bakesteer-eval-") as scratch:
        if source.gguf_file:
            source = materialize_gguf(source, dtype, Path(scratch))
            free_memory()
        return evaluate_pair(
            directory,
            source,
            vector=vector,
            band=band,
            positive=positive,
            negative=negative,
            dtype=dtype,
            placement=placement_from(options).with_offload_folder(Path(scratch) / "offload"),
            trust_remote_code=record.strategy == "remote_code",
            options=options,
            alpha=record.k,
        )
