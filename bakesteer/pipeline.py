"""``convert()``: the pipeline, top to bottom.

resolve -> check options against the config -> load -> calibrate (or reuse a vector) -> offsets -> reference outputs
(hooked, base, float32 floor) -> free the model -> write the patched checkpoint -> reload it with plain transformers
and validate -> metadata -> rename into place.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import platform
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bakesteer.architectures import ArchitectureSpec
from bakesteer.architectures.readers import COMMAND as READER_COMMAND
from bakesteer.architectures.readers import MODELS as READER_MODELS
from bakesteer.architectures.readers import loads_in, oldest_transformers
from bakesteer.bake import BiasPlan, bias_plan, output_config_text, write_remote_code
from bakesteer.batching import pad_token_id
from bakesteer.card import source_license, write_card
from bakesteer.configfiles import (
    CONFIG_FILE,
    GENERATION_CONFIG_FILE,
    copy_small_files,
    is_tokenizer_file,
    tokenizer_class_for_4,
)
from bakesteer.dequantize import materialize_gguf
from bakesteer.errors import DegenerateError, OptionError, interrupted_state
from bakesteer.fingerprint import metadata_fingerprint
from bakesteer.loading import calibrate, interleave, load, prepare, vector_file
from bakesteer.options import ConvertOptions, check_alpha_for_model
from bakesteer.placement import free_memory
from bakesteer.prompts import context_length, load_prompt_set, render_prompts
from bakesteer.record import EVAL_FILE, RECORD_FILE, VECTOR_FILE, Record, atomic_path, write_json
from bakesteer.source import (
    ModelSource,
    resolve_dtype,
)
from bakesteer.space import gguf_copy_bytes, named_disk_errors, output_bytes, require_space, spill_bytes
from bakesteer.validation import ValidationReport, check_tokenizer, reference_outputs, validate_checkpoint
from bakesteer.vector import SteeringVector
from bakesteer.version import __version__
from bakesteer.writer import (
    AtomicDirectory,
    check_apart,
    check_output,
    normalise_modes,
    save_tokenizer,
    write_weights,
)

logger = logging.getLogger(__name__)


@dataclass
class ConvertResult:
    """What :func:`convert` produced.

    Attributes:
        output: The output directory.
        band: ``(start, end)``, end excluded.
        alpha: ``k``.
        offset_norms: ``{layer: |v_l|}`` for the band.
        validation: The validation report.
        metadata: The contents of ``bakesteer.json``.
        seconds: Wall time.
        timings: Seconds per stage (kept out of the checkpoint, so that the same inputs give the same bytes).
        push: The :class:`~bakesteer.hub.PushResult` after ``push_to_hub``.
        up_to_date: With ``push_to_hub``: the target's :class:`~bakesteer.hub.PublishedState` when it already held
            this fingerprint, so nothing was converted, written or pushed (``validation`` is then ``None``).
    """

    output: Path
    band: tuple[int, int]
    alpha: float
    offset_norms: dict[int, float]
    validation: ValidationReport | None
    metadata: dict[str, Any]
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)
    push: Any = None
    up_to_date: Any = None

    def report(self) -> dict[str, Any]:
        """What ``convert --report FILE`` writes: what the run cost and where, beside what it produced (the parts
        of a run that differ between two identical conversions live here, not in the checkpoint)."""
        return {
            "bakesteer_version": __version__,
            "output": self.output.name,
            "fingerprint": self.metadata["fingerprint"],
            "k": self.alpha,
            "validation": None if self.validation is None else self.validation.to_dict(),
            "timings_s": {**self.timings, "total": round(self.seconds, 3)},
            "machine": {
                "platform": platform.platform(),
                "processor": platform.machine(),
                "cpus": os.cpu_count(),
                "torch_threads": torch.get_num_threads(),
                "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            },
            "push": None
            if self.push is None
            else {"repo": self.push.repo_id, "branch": self.push.branch, "commit": self.push.commit},
        }


@dataclass
class _Timer:
    stages: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        logger.info("%s...", name)
        try:
            yield
        finally:
            self.stages[name] = round(time.perf_counter() - start, 3)


def compute_vector(model: str, output: Path, options: ConvertOptions | None = None) -> SteeringVector:
    """Calibrate ``model`` and save only the steering vector (``mu`` and directions for every layer).

    Many ``k`` variants can then share one calibration: ``convert(..., ConvertOptions(vector=output, alpha=...))``.

    Raises:
        BakesteerError: any bad input (see :mod:`bakesteer.errors`).
    """
    options = options or ConvertOptions()
    output = Path(output)
    check_apart(output, model)
    if output.exists() and not options.overwrite:
        from bakesteer.errors import OutputExistsError

        raise OutputExistsError(output)
    # a vector writes no checkpoint, so families that bake only through remote code can still be calibrated
    source, _, spec, _ = prepare(model, options.replace(allow_remote_code=True))
    positive = load_prompt_set(options.positive, "positive")
    negative = load_prompt_set(options.negative, "negative")
    output.absolute().parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".bakesteer-", dir=output.absolute().parent) as scratch:
        if source.gguf_file:
            source = materialize_gguf(source, resolve_dtype(options.dtype, source), Path(scratch))
        loaded, tokenizer, _, _ = load(source, options, Path(scratch))
        vector = calibrate(loaded, tokenizer, spec, positive, negative, options)
        del loaded
        free_memory()
    vector.info["source"] = source.describe()
    vector.info["bakesteer_version"] = __version__
    with atomic_path(output) as partial:
        vector.save(partial)
    return vector


def _published(source: ModelSource, options: ConvertOptions) -> Any:
    """The target's state when it already holds the fingerprint this conversion would have, else ``None``.

    Checked before anything is loaded, as ``publish`` does, so a rerun converts, writes and pushes nothing.

    Raises:
        HubError: the Hub cannot be reached or refuses the read (nothing is converted).
    """
    from bakesteer.fingerprint import fingerprint_of
    from bakesteer.hub import check_online, published_state
    from bakesteer.prompts import prompt_hashes

    assert options.push_to_hub is not None
    check_online()
    planned = fingerprint_of(source.describe(), __version__, options.to_dict(), prompt_hashes(options))
    state = published_state(options.push_to_hub, options.push_branch)
    if state.fingerprint != planned:
        return None
    logger.info("%s already holds fingerprint %s: nothing to convert", options.push_to_hub, planned)
    return state


def _choose_alpha(job: _Job, output: Path) -> tuple[float, dict[str, Any]]:
    """``--alpha auto``: broadcast runs up the grid on ``options.direction``'s side with an early stop and one
    bisection, then the choice (by the judge, when one is given: a local judge is loaded after the source model is
    freed, and the source is loaded again after it).

    Returns:
        The chosen k and the ``sweep`` record for ``bakesteer.json`` (grid, rule, decisions, every run's metrics).
    """
    from bakesteer.judge import JudgeSpec, is_url, judge_runs
    from bakesteer.sweep import auto_rule, auto_sweep, choose_alpha, measurement_inputs, window

    options = job.options
    inputs = measurement_inputs(job.tokenizer, job.model, options, job.positive, job.negative)
    result, decisions = auto_sweep(job.model, job.tokenizer, job.spec, job.vector, job.band, inputs, options)
    spec = JudgeSpec.from_options(options)
    if spec is not None:
        local = not is_url(spec.target)
        if local:
            job.model = None
            free_memory()
        result.judge = judge_runs(spec, options, [(run.metrics, run.samples) for run in result.runs])
        if local:
            _load_source(job, output)
    k = choose_alpha(result, decisions, result.judge)
    record = {
        "direction": options.direction,
        "grid": auto_alphas_tried(result),
        "rule": auto_rule(result.judge),
        "chosen": k,
        "chosen_by": chosen_by(result),
        "runs_measured": len([r for r in result.runs if r.mode == "broadcast"]),
        "decisions": decisions,
        "eval_set": result.eval_set,
        "concept": result.concept,
        "max_new_tokens": options.max_new_tokens,
        "judge": result.judge,
        "window": window(result.runs, result.judge),
        "runs": [run.to_dict(samples=False) for run in result.runs],
    }
    return k, record


def chosen_by(result: Any) -> str:
    """Which objective chose k: ``judge``, or ``coherence`` (no judge, or a judge whose every reply at k = 0 was
    unparseable: the effect is then the concept score's)."""
    from bakesteer.sweep import readable_effect_key

    if not result.judge:
        return "coherence"
    return "judge" if readable_effect_key(result.judge, result.run(0.0).metrics) != "concept" else "coherence"


def auto_alphas_tried(result: Any) -> list[float]:
    """The k ``--alpha auto`` measured, in the order run (0 first)."""
    return [run.alpha for run in result.runs if run.mode == "broadcast"]


def convert(model: str, output: Path, options: ConvertOptions | None = None) -> ConvertResult:
    """Bake norm-calibrated steering into a copy of ``model`` and validate it.

    Args:
        model: A Hub id, a local model directory, or a ``.gguf`` file.
        output: The directory to create (written to a hidden sibling and renamed into place when validated).
        options: Every other choice; defaults to ``ConvertOptions()``.

    Returns:
        A :class:`ConvertResult`.

    Raises:
        BakesteerError: any bad input (see :mod:`bakesteer.errors`); ``ValidationError`` when the reloaded
            checkpoint does not reproduce the hooked model. Nothing is left at ``output`` on failure.
    """
    options = options or ConvertOptions()
    started = time.perf_counter()
    timer = _Timer()
    output = Path(output)
    check_output(output.absolute(), overwrite=options.overwrite, source=model)
    _check_judge(options)
    with timer.stage("resolve"):
        source, config, spec, band = prepare(model, options)
    job = _Job(options, timer, source, config, spec, band, vector_file(options, config))
    job.positive = load_prompt_set(options.positive, "positive")
    job.negative = load_prompt_set(options.negative, "negative")
    if options.push_to_hub and not options.force_push:
        with timer.stage("target"):
            state = _published(source, options)
        if state is not None:
            k_planned = math.nan if options.auto else float(options.alpha)
            empty = ConvertResult(output, band, k_planned, {}, None, {"fingerprint": state.fingerprint}, 0.0)
            empty.up_to_date, empty.timings = state, dict(timer.stages)
            empty.seconds = time.perf_counter() - started
            return empty

    with (
        named_disk_errors(output) as job.budget,
        AtomicDirectory(output, overwrite=options.overwrite, source=model) as staging,
    ):
        job.staging = staging
        _load_source(job, output)
        _plan_offsets(job, output)
        _write_checkpoint(job)
        _validate(job)
        _write_record(job)
        final = staging.commit()
    result = ConvertResult(
        output=final,
        band=band,
        alpha=job.k,
        offset_norms={layer: float(job.offsets[layer].norm()) for layer in range(*band)},
        validation=job.report,
        metadata=job.metadata,
        seconds=time.perf_counter() - started,
        timings=dict(timer.stages),
    )
    if options.push_to_hub:
        check_degenerate(job.metadata, options, options.push_to_hub)
        result.push = _push_output(final, options)
    return result


def _check_judge(options: ConvertOptions) -> None:
    """A judge is for ``--eval`` and ``--alpha auto``; a server judge must answer before anything is loaded.

    Raises:
        OptionError: ``--judge`` with neither.
        JudgeError: the server cannot be reached, refuses the key or does not serve the model.
    """
    from bakesteer.judge import JudgeSpec, check_reachable

    spec = JudgeSpec.from_options(options)
    if spec is None:
        return
    if not (options.eval or options.auto):
        raise OptionError(
            "--judge", options.to_dict()["judge"], reason="judges nothing here", hint="add --eval or --alpha auto"
        )
    check_reachable(spec)


def check_degenerate(metadata: dict[str, Any], options: ConvertOptions, subject: str) -> None:
    """The degeneration gate before a push: a checkpoint whose ``--eval`` flagged it is not pushed.

    Raises:
        DegenerateError: flagged, and ``options.allow_degenerate`` is off.
    """
    degenerate = (metadata.get("evaluation") or {}).get("metrics", {}).get("model", {}).get("degenerate")
    if degenerate and degenerate.get("flagged") and not options.allow_degenerate:
        raise DegenerateError(subject, rate=degenerate["rate"], reasons=degenerate["reasons"])


@dataclass
class _Job:
    """One conversion's state, filled in stage by stage (load, plan, write, validate, record)."""

    options: ConvertOptions
    timer: _Timer
    source: ModelSource
    config: Any
    spec: ArchitectureSpec
    band: tuple[int, int]
    from_file: SteeringVector | None
    positive: Any = None
    negative: Any = None
    budget: Any = None
    staging: Any = None
    model: Any = None
    tokenizer: Any = None
    dtype: Any = None
    placement: Any = None
    pad_id: int = 0
    probe_prompts: list[str] = field(default_factory=list)
    probes: list[list[int]] = field(default_factory=list)
    vector: Any = None
    auto: dict[str, Any] | None = None
    k: float = math.nan
    offsets: Any = None
    plan: Any = None
    config_text: str = ""
    reference: Any = None
    generation_config: Any = None
    written: list[str] = field(default_factory=list)
    tokenizer_class: str | None = None
    report: ValidationReport | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def io(self) -> dict[str, Any]:
        """The batching and decoding settings reference and validation share."""
        return {
            "batch_size": self.options.batch_size,
            "pad_id": self.pad_id,
            "greedy_tokens": self.options.greedy_tokens,
        }


def _load_source(job: _Job, output: Path) -> None:
    """Dequantize a GGUF source, load the model, tokenise the probes and check the space the output needs."""
    options, staging, budget = job.options, job.staging, job.budget
    if job.source.gguf_file:
        copy_dtype = resolve_dtype(options.dtype, job.source)
        budget.needed = gguf_copy_bytes(job.source.directory / job.source.gguf_file, copy_dtype)
        require_space(output, budget.needed)
        with job.timer.stage("dequantize"):
            job.source = materialize_gguf(job.source, copy_dtype, staging.scratch)
            free_memory()
    with job.timer.stage("load"):
        job.model, job.tokenizer, job.dtype, job.placement = load(job.source, options, staging.scratch)
    # the probes are tokenised before calibrating, so that the space they spill to is checked before the work
    job.pad_id = pad_token_id(job.tokenizer)
    positive, negative = job.positive, job.negative
    job.probe_prompts = interleave(positive.heldout, negative.heldout, options.probes)
    limit = context_length(job.model)
    pos_ids, neg_ids = (
        render_prompts(job.tokenizer, s.heldout, chat_template=options.chat_template, limit=limit, name=s.name)
        for s in (positive, negative)
    )
    job.probes = interleave(pos_ids, neg_ids, options.probes)
    vocab = int(job.model.get_output_embeddings().weight.shape[0])
    budget.needed = output_bytes(job.source, job.spec, job.config, job.dtype, output) + spill_bytes(
        job.probes, options.greedy_tokens, vocab
    )
    require_space(output, budget.needed)


def _plan_offsets(job: _Job, output: Path) -> None:
    """Calibrate (or reuse the vector), choose k, plan the biases and record the reference outputs; then free the
    source model, so that only one model is in memory at a time."""
    options = job.options
    if job.from_file is None:
        with job.timer.stage("calibrate"):
            job.vector = calibrate(job.model, job.tokenizer, job.spec, job.positive, job.negative, options)
    else:
        job.vector = job.from_file
    if options.auto:
        with job.timer.stage("sweep"):
            job.k, job.auto = _choose_alpha(job, output)
            check_alpha_for_model(job.k, job.vector.d_model)
    else:
        job.k = float(options.alpha)
    job.offsets = job.vector.offsets(job.band, job.k)
    job.plan = bias_plan(job.model, job.spec, job.offsets, job.dtype)
    job.config_text = output_config_text(
        job.source.directory / CONFIG_FILE, job.model.config, job.spec, job.plan, job.dtype
    )
    with job.timer.stage("reference"):
        job.reference = reference_outputs(
            job.model, job.spec, job.offsets, job.probes, folder=job.staging.scratch, **job.io
        )
    job.generation_config = job.model.generation_config
    job.model = None  # the source model is gone before the written checkpoint is loaded
    free_memory()


def _write_checkpoint(job: _Job) -> None:
    """The weights (base shards linked, biased shards rewritten), the config, and the small files."""
    path, source = job.staging.path, job.source
    with job.timer.stage("write"):
        job.written = write_weights(source.directory, source.weight_files, source.index_file, job.plan, path, job.dtype)
        (path / CONFIG_FILE).write_text(job.config_text, encoding="utf-8")
        if job.spec.remote is not None:
            write_remote_code(path, job.spec, __version__)
        copied = copy_small_files(source.directory, path)
        if GENERATION_CONFIG_FILE not in copied:  # the source has none: what transformers derives from config
            job.generation_config.save_pretrained(path)
        if not any(is_tokenizer_file(name) for name in copied):
            save_tokenizer(job.tokenizer, path)
        job.tokenizer_class = tokenizer_class_for_4(path)  # a class only transformers 5 has is renamed


def _validate(job: _Job) -> None:
    """Reload the written checkpoint with plain transformers and compare it with the hooked source.

    Raises:
        ValidationError: see :func:`~bakesteer.validation.validate_checkpoint`.
    """
    options = job.options
    with job.timer.stage("validate"):
        check_tokenizer(job.staging.path, job.tokenizer, job.probe_prompts, chat_template=options.chat_template)
        job.report = validate_checkpoint(
            job.staging.path,
            job.reference,
            expected_keys=job.plan.keys(),
            config_updates=job.plan.config_updates,
            trust_remote_code=job.spec.remote is not None,
            alpha=job.k,
            placement=job.placement,
            **job.io,
        )
    job.reference.close()
    gc.collect()


def _write_record(job: _Job) -> None:
    """The vector, ``--eval``'s measurement, the card and ``bakesteer.json`` (last: it lists every file)."""
    options, path = job.options, job.staging.path
    job.vector.save(path / VECTOR_FILE, band=job.band, alpha=job.k)
    assert job.report is not None
    metadata = _metadata(
        job.source,
        job.spec,
        job.vector,
        options,
        job.k,
        job.band,
        job.plan,
        job.offsets,
        job.written,
        job.dtype,
        job.report,
    )
    metadata["output"]["tokenizer_class"] = job.tokenizer_class
    if job.auto is not None:
        metadata["sweep"] = job.auto  # write_card draws its plot
    if options.eval:
        from bakesteer.evaluate import evaluate_pair

        with job.timer.stage("evaluate"):
            evaluation = evaluate_pair(
                path,
                job.source,
                vector=job.vector,
                band=job.band,
                positive=job.positive,
                negative=job.negative,
                dtype=job.dtype,
                placement=job.placement,
                trust_remote_code=job.spec.remote is not None,
                options=options,
                alpha=job.k,
            )
        metadata["evaluation"] = evaluation.summary()
        write_json(path / EVAL_FILE, evaluation.to_dict())
    metadata["fingerprint"] = metadata_fingerprint(Record(metadata))
    write_card(path, Record(metadata), license_=source_license(job.source.directory))
    # what a push may later delete: the files this output consists of, and nothing a repo owner added
    metadata["files"] = sorted({p.name for p in path.iterdir() if p.is_file()} | {RECORD_FILE})
    write_json(path / RECORD_FILE, metadata)
    normalise_modes(path)
    job.metadata = metadata


def _push_output(final: Path, options: ConvertOptions) -> Any:
    """``--push-to-hub``: push the validated output. It is already in place, so a failed push leaves it there.

    Raises:
        HubError: the push failed.
    """
    from bakesteer.hub import push

    assert options.push_to_hub is not None
    logger.info("push...")
    try:
        return push(
            final,
            options.push_to_hub,
            private=options.private,
            branch=options.push_branch,
            commit_message=options.commit_message,
        )
    except KeyboardInterrupt as err:
        interrupted_state(
            err,
            f"the output in {final} is complete and validated, but the push to {options.push_to_hub} did not "
            f"finish (a Hub commit is all or nothing); `bakesteer push {final} {options.push_to_hub}` completes it",
        )
        raise


def _metadata(
    source: ModelSource,
    spec: ArchitectureSpec,
    vector: SteeringVector,
    options: ConvertOptions,
    k: float,
    band: tuple[int, int],
    plan: BiasPlan,
    offsets: torch.Tensor,
    written: list[str],
    dtype: torch.dtype,
    report: ValidationReport,
) -> dict[str, Any]:
    import transformers

    norms = [float(offsets[layer].norm()) for layer in range(*band)]
    return {
        "bakesteer_version": __version__,
        "base_model": source.describe()
        | ({"dequantized_to": str(dtype).removeprefix("torch.")} if source.kind == "gguf" else {}),
        "architecture": {
            "model_type": spec.model_type,
            "strategy": plan.strategy,
            "runtimes": list(spec.runtimes),
            "config_updates": plan.config_updates,
        },
        "method": {
            "formula": "v_l = k * mu_l / sqrt(d_model) * c_l",
            "k": k,
            "k_chosen_by": "sweep" if options.auto else "user",
            "d_model": vector.d_model,
            "num_layers": vector.num_layers,
            "band": {"start": band[0], "end_exclusive": band[1], "spec": options.layers},
            "relative_strength": k / math.sqrt(vector.d_model),
            "offset_norm_min": min(norms),
            "offset_norm_max": max(norms),
            "mu": [round(float(m), 6) for m in vector.mu],
            "vector_reused": options.vector is not None,
        },
        "calibration": vector.info,
        "options": options.record(),
        "output": {"dtype": str(dtype).removeprefix("torch."), "weight_files": written},
        "validation": report.to_dict(),
        "readers": {
            "oldest_transformers": oldest_transformers(spec),
            "loads_in": loads_in(
                spec, transformers_version=transformers.__version__, relative_diff=report.relative_diff
            ),
            "measured_on": READER_MODELS,
            "measured_by": READER_COMMAND,
        },
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
    }
