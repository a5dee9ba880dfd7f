"""Loading a source for conversion or measurement: resolve, check, load, calibrate.

One path, used by ``convert``, ``vector``, ``sweep``, ``eval`` and ``--alpha auto``: :func:`prepare` resolves MODEL and
checks the options against its config; :func:`load` places the model; :func:`calibrate` computes ``mu`` and the
directions; :func:`load_for_measurement` does all three for hooks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from bakesteer.architectures import ArchitectureSpec, spec_for
from bakesteer.batching import pad_token_id
from bakesteer.calibration import difference_of_means, mean_norms, residual_statistics, unit_directions
from bakesteer.checkfiles import check_weights_fit
from bakesteer.dequantize import materialize_gguf
from bakesteer.options import ConvertOptions, check_alpha_for_model, parse_layers
from bakesteer.placement import Placement, free_memory, load_model, placement_from
from bakesteer.prompts import PromptSet, context_length, load_prompt_set, render_prompts
from bakesteer.source import ModelSource, load_config, resolve_dtype, resolve_source, weight_keys
from bakesteer.vector import SteeringVector

logger = logging.getLogger(__name__)

T = TypeVar("T")


def interleave(positive: Sequence[T], negative: Sequence[T], count: int) -> list[T]:
    """Up to ``count`` held-out prompts (or their token ids) alternating positive, negative, ...: the first two (used
    for the greedy continuation check) are one of each."""
    out: list[T] = []
    for pair in zip(positive, negative, strict=False):
        out.extend(pair)
    return out[:count]


def calibrate(
    model: Any,
    tokenizer: Any,
    spec: ArchitectureSpec,
    positive: PromptSet,
    negative: PromptSet,
    options: ConvertOptions,
) -> SteeringVector:
    """Compute ``mu`` and the unit difference-of-means directions on the calibration parts of both sets.

    Raises:
        DirectionError: (later, in the band) when a direction is degenerate.
    """
    pad_id = pad_token_id(tokenizer)
    kwargs = {"batch_size": options.batch_size, "pad_id": pad_id}
    limit = context_length(model)
    pos_ids = render_prompts(
        tokenizer, positive.calibration, chat_template=options.chat_template, limit=limit, name=positive.name
    )
    neg_ids = render_prompts(
        tokenizer, negative.calibration, chat_template=options.chat_template, limit=limit, name=negative.name
    )
    pos = residual_statistics(model, spec, pos_ids, desc="calibrating (positive)", **kwargs)
    neg = residual_statistics(model, spec, neg_ids, desc="calibrating (negative)", **kwargs)
    directions, diff_norms = unit_directions(difference_of_means(pos, neg))
    info = {
        "positive": positive.describe(),
        "negative": negative.describe(),
        "chat_template": bool(options.chat_template and getattr(tokenizer, "chat_template", None)),
        "tokens_counted": pos.token_count + neg.token_count,
        "excluded": "padding and position 0 of every sequence (attention sink)",
        "residual": "output of decoder block l (0-based), before the final norm",
        "direction": "mean last-token residual, positive minus negative, unit-normalised",
        "compute_dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "difference_norms": [round(float(n), 6) for n in diff_norms],
    }
    return SteeringVector(mean_norms(pos, neg), directions, str(model.config.model_type), info)


def prepare(model: str, options: ConvertOptions) -> tuple[ModelSource, Any, ArchitectureSpec, tuple[int, int]]:
    options.check()
    source = resolve_source(model, revision=options.revision)
    config = load_config(source)
    spec = spec_for(config, allow_remote_code=options.allow_remote_code)
    text = config.get_text_config()  # the config itself, or a multimodal model's language part
    if not source.gguf_file:
        check_weights_fit(
            weight_keys(source),
            model=source.model_id,
            model_type=str(config.model_type),
            layers=spec.layers,
            num_layers=int(text.num_hidden_layers),
        )
    band = parse_layers(options.layers, int(text.num_hidden_layers))
    if not options.auto:
        check_alpha_for_model(float(options.alpha), int(text.hidden_size))
    return source, config, spec, band


def vector_file(options: ConvertOptions, config: Any) -> SteeringVector | None:
    """The ``--vector`` file, checked against the model's family and shape (``None`` without ``--vector``)."""
    if options.vector is None:
        return None
    vector = SteeringVector.load(options.vector)
    text = config.get_text_config()
    vector.check_fits(
        str(config.model_type), int(text.num_hidden_layers), int(text.hidden_size), Path(options.vector).name
    )
    return vector


def load(source: ModelSource, options: ConvertOptions, scratch: Path) -> tuple[Any, Any, torch.dtype, Placement]:
    """Load the source as ``options`` place it (a device map offloads into ``scratch`` unless told otherwise)."""
    torch.manual_seed(options.seed)
    dtype = resolve_dtype(options.dtype, source)
    placement = placement_from(options).with_offload_folder(scratch / "offload")
    model, tokenizer = load_model(source, dtype, placement)
    return model, tokenizer, dtype, placement


@dataclass
class Loaded:
    """A model loaded for measuring, with its calibration (see :func:`load_for_measurement`)."""

    model: Any
    tokenizer: Any
    spec: ArchitectureSpec
    vector: SteeringVector
    band: tuple[int, int]
    positive: PromptSet
    negative: PromptSet
    source: ModelSource
    dtype: torch.dtype
    placement: Placement

    @property
    def name(self) -> str:
        """The model as recorded: a Hub id, or a directory's or file's base name."""
        return self.source.model_id


@contextmanager
def load_for_measurement(
    model: str, options: ConvertOptions, scratch: Path, *, alphas: tuple[float, ...] = ()
) -> Iterator[Loaded]:
    """Resolve, load and calibrate (or read ``--vector``) ``model`` for hooks; the model is freed on exit.

    Steering by hooks needs no bias site, so every registered family can be measured.

    Raises:
        BakesteerError: any bad input, including an alpha too large for the model.
    """
    source, config, spec, band = prepare(model, options.replace(allow_remote_code=True, alpha=0.0))
    for alpha in alphas:
        check_alpha_for_model(alpha, int(config.get_text_config().hidden_size))
    from_file = vector_file(options, config)
    positive = load_prompt_set(options.positive, "positive")
    negative = load_prompt_set(options.negative, "negative")
    if source.gguf_file:
        source = materialize_gguf(source, resolve_dtype(options.dtype, source), scratch)
        free_memory()
    loaded, tokenizer, dtype, placement = load(source, options, scratch)
    try:
        vector = from_file or calibrate(loaded, tokenizer, spec, positive, negative, options)
        yield Loaded(loaded, tokenizer, spec, vector, band, positive, negative, source, dtype, placement)
    finally:
        del loaded
        free_memory()
