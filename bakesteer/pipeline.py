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
from bakesteer.card import METADATA_FILENAME, source_license, write_card
from bakesteer.configfiles import (
    CONFIG_FILE,
    GENERATION_CONFIG_FILE,
    copy_small_files,
    is_tokenizer_file,
    tokenizer_class_for_4,
)
from bakesteer.dequantize import materialize_gguf
from bakesteer.errors import interrupted_state
from bakesteer.fingerprint import metadata_fingerprint
from bakesteer.loading import calibrate, interleave, load, prepare, vector_file
from bakesteer.options import ConvertOptions, check_alpha_for_model
from bakesteer.placement import free_memory
from bakesteer.prompts import PromptSet, context_length, load_prompt_set, render_prompts
from bakesteer.source import (
    ModelSource,
    resolve_dtype,
)
from bakesteer.space import gguf_copy_bytes, named_disk_errors, output_bytes, require_space, spill_bytes
from bakesteer.validation import ValidationReport, check_tokenizer, reference_outputs, validate_checkpoint
from bakesteer.vector import VECTOR_FILENAME, SteeringVector
from bakesteer.version import __version__
from bakesteer.writer import (
    AtomicDirectory,
    check_apart,
    check_output,
    normalise_modes,
    save_tokenizer,
    write_json,
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
            else {"repo": self.push.repo_id, "revision": self.push.revision, "commit": self.push.commit},
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
    partial = output.with_name(f".{output.name}.partial")
    vector.save(partial)
    partial.replace(output)
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


def _choose_alpha(
    model: Any,
    tokenizer: Any,
    spec: ArchitectureSpec,
    vector: SteeringVector,
    band: tuple[int, int],
    positive: PromptSet,
    negative: PromptSet,
    options: ConvertOptions,
) -> tuple[float, dict[str, Any]]:
    """``--alpha auto``: a broadcast sweep over the grid on ``options.direction``'s side, then the rule.

    Returns:
        The chosen k and the ``sweep`` record for ``bakesteer.json`` (grid, rule, decisions, every run's metrics).
    """
    from bakesteer.sweep import auto_alphas, auto_rule, choose_alpha, measurement_inputs, sweep_loaded

    inputs = measurement_inputs(tokenizer, model, options, positive, negative)
    grid = auto_alphas(options.direction)
    result = sweep_loaded(
        model, tokenizer, spec, vector, band, inputs, options, alphas=grid, modes=["broadcast"], name=""
    )
    k, decisions = choose_alpha(result, options.direction)
    record = {
        "direction": options.direction,
        "grid": grid,
        "rule": auto_rule(),
        "chosen": k,
        "decisions": decisions,
        "eval_set": result.eval_set,
        "concept": result.concept,
        "max_new_tokens": options.max_new_tokens,
        "runs": [run.to_dict(samples=False) for run in result.runs],
    }
    return k, record


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
    with timer.stage("resolve"):
        source, config, spec, band = prepare(model, options)
    from_file = vector_file(options, config)
    positive = load_prompt_set(options.positive, "positive")
    negative = load_prompt_set(options.negative, "negative")
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
        named_disk_errors(output) as budget,
        AtomicDirectory(output, overwrite=options.overwrite, source=model) as staging,
    ):
        if source.gguf_file:
            copy_dtype = resolve_dtype(options.dtype, source)
            budget.needed = gguf_copy_bytes(source.directory / source.gguf_file, copy_dtype)
            require_space(output, budget.needed)
            with timer.stage("dequantize"):
                source = materialize_gguf(source, copy_dtype, staging.scratch)
                free_memory()
        with timer.stage("load"):
            loaded, tokenizer, dtype, placement = load(source, options, staging.scratch)
        # the probes are tokenised before calibrating, so that the space they spill to is checked before the work
        pad_id = pad_token_id(tokenizer)
        probe_prompts = interleave(positive.heldout, negative.heldout, options.probes)
        limit = context_length(loaded)
        pos_ids, neg_ids = (
            render_prompts(tokenizer, s.heldout, chat_template=options.chat_template, limit=limit, name=s.name)
            for s in (positive, negative)
        )
        probes = interleave(pos_ids, neg_ids, options.probes)
        vocab = int(loaded.get_output_embeddings().weight.shape[0])
        budget.needed = output_bytes(source, spec, config, dtype, output) + spill_bytes(
            probes, options.greedy_tokens, vocab
        )
        require_space(output, budget.needed)
        if from_file is None:
            with timer.stage("calibrate"):
                vector = calibrate(loaded, tokenizer, spec, positive, negative, options)
        else:
            vector = from_file
        auto: dict[str, Any] | None = None
        if options.auto:
            with timer.stage("sweep"):
                k, auto = _choose_alpha(loaded, tokenizer, spec, vector, band, positive, negative, options)
                check_alpha_for_model(k, vector.d_model)
        else:
            k = float(options.alpha)
        offsets = vector.offsets(band, k)
        plan = bias_plan(loaded, spec, offsets, dtype)
        config_text = output_config_text(source.directory / CONFIG_FILE, loaded.config, spec, plan, dtype)

        io = {"batch_size": options.batch_size, "pad_id": pad_id, "greedy_tokens": options.greedy_tokens}
        with timer.stage("reference"):
            reference = reference_outputs(loaded, spec, offsets, probes, folder=staging.scratch, **io)
        generation_config = loaded.generation_config
        del loaded  # the source model is gone before the written checkpoint is loaded: one model at a time
        free_memory()

        with timer.stage("write"):
            written = write_weights(source.directory, source.weight_files, source.index_file, plan, staging.path, dtype)
            (staging.path / CONFIG_FILE).write_text(config_text, encoding="utf-8")
            if spec.remote is not None:
                write_remote_code(staging.path, spec, __version__)
            copied = copy_small_files(source.directory, staging.path)
            if GENERATION_CONFIG_FILE not in copied:  # the source has none: what transformers derives from config
                generation_config.save_pretrained(staging.path)
            if not any(is_tokenizer_file(name) for name in copied):
                save_tokenizer(tokenizer, staging.path)
            tokenizer_class = tokenizer_class_for_4(staging.path)  # a class only transformers 5 has is renamed
        with timer.stage("validate"):
            check_tokenizer(staging.path, tokenizer, probe_prompts, chat_template=options.chat_template)
            report = validate_checkpoint(
                staging.path,
                reference,
                expected_keys=plan.keys(),
                config_updates=plan.config_updates,
                trust_remote_code=spec.remote is not None,
                alpha=k,
                placement=placement,
                **io,
            )
        reference.close()
        gc.collect()
        vector.save(staging.path / VECTOR_FILENAME, band=band, alpha=k)
        offset_norms = {layer: float(offsets[layer].norm()) for layer in range(*band)}
        metadata = _metadata(source, spec, vector, options, k, band, plan, offsets, written, dtype, report)
        metadata["output"]["tokenizer_class"] = tokenizer_class
        if auto is not None:
            metadata["sweep"] = auto  # write_card draws its plot
        if options.eval:
            from bakesteer.evaluate import EVAL_FILE, evaluate_pair

            with timer.stage("evaluate"):
                evaluation = evaluate_pair(
                    staging.path,
                    source,
                    vector=vector,
                    band=band,
                    positive=positive,
                    negative=negative,
                    dtype=dtype,
                    placement=placement,
                    trust_remote_code=spec.remote is not None,
                    options=options,
                    alpha=k,
                )
            metadata["evaluation"] = evaluation.summary()
            write_json(staging.path / EVAL_FILE, evaluation.to_dict())
        metadata["fingerprint"] = metadata_fingerprint(metadata)
        write_card(staging.path, metadata, license_=source_license(source.directory))
        # what a push may later delete: the files this output consists of, and nothing a repo owner added
        metadata["files"] = sorted({p.name for p in staging.path.iterdir() if p.is_file()} | {METADATA_FILENAME})
        write_json(staging.path / METADATA_FILENAME, metadata)
        normalise_modes(staging.path)
        final = staging.commit()
    result = ConvertResult(
        output=final,
        band=band,
        alpha=k,
        offset_norms=offset_norms,
        validation=report,
        metadata=metadata,
        seconds=time.perf_counter() - started,
        timings=dict(timer.stages),
    )
    if options.push_to_hub:
        from bakesteer.hub import push

        # the output is already in place: a failed push leaves it there and raises a HubError
        logger.info("push...")
        try:
            result.push = push(
                final,
                options.push_to_hub,
                private=options.private,
                revision=options.push_branch,
                commit_message=options.commit_message,
            )
        except KeyboardInterrupt as err:
            interrupted_state(
                err,
                f"the output in {final} is complete and validated, but the push to {options.push_to_hub} did not "
                f"finish (a Hub commit is all or nothing); `bakesteer push {final} {options.push_to_hub}` completes it",
            )
            raise
    return result


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
