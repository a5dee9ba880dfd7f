"""Measuring what a model does: greedy completions, first-token logits, perplexity, and the base model's reading.

One *run* is a model in some state (the base, the base under steering hooks, or a baked checkpoint loaded plainly)
answering the same inputs; :func:`run_outputs` collects what that model itself produces. Fluency and the concept
score need the *unsteered base* to re-read a run's completions (:func:`base_reading`), and KL compares a run's
first-token logits with the base's, so :func:`run_metrics` combines a run with the base run. Both ``sweep`` (hooks)
and ``eval`` (a written checkpoint) go through these same functions, so a broadcast sweep at ``k`` and the
checkpoint baked at ``k`` give the same numbers.

The recipes (also in the README):

- ``kl``: mean over the held-out negative prompts of ``KL(P_base || P_run)`` of the first generated token, raw
  logits, float64, nats.
- ``perplexity``: of the shipped neutral reference text (about 1,100 tokens, read in windows of at most 1,024
  tokens; the first token of each window is not scored), under the run's model.
- ``fluency``: perplexity, under the unsteered base, of the run's completions of the eval prompts (each scored
  after its chat-templated prompt; the end-of-turn token is not scored).
- ``repetition``: share of repeated token 4-grams in the eval completions.
- ``concept``: the base model reads each eval completion as plain text; the mean residual of its tokens (position 0,
  the attention sink, excluded) at the band's middle layer ``m`` is projected on ``c_m``, and scaled so that the
  held-out negative prompts, read the same way, map to 0 and the held-out positive ones to 1. The mean over
  completions.
- ``refusal_rate``: share of completions of the held-out positive / negative prompts that contain a refusal marker
  (or are empty).
- ``refusal_score``: mean over the held-out positive and negative prompts of the refusal log-odds at the first
  generated position.
- ``degenerate``: the first ``--long-prompts`` eval prompts answered with ``--long-tokens`` greedy tokens and checked
  by :mod:`bakesteer.degeneration` (loops, an unclosed ``<think>``, a change of script); flagged against the base.

A *prompted* run (``--baseline-prompt``) is the unsteered base answering every prompt after that system prompt; its
reference perplexity is the base's (a system prompt does not change how the model reads plain text).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

import torch

import bakesteer.degeneration as degeneration
from bakesteer.batching import left_padded_batches
from bakesteer.metrics import (
    REFUSAL_OPENERS,
    first_token_kl,
    perplexity,
    refusal_log_odds,
    refusal_rate,
    repetition_rate,
    scaled_projection,
)
from bakesteer.placement import input_device
from bakesteer.prompts import PromptSet, render_prompts

logger = logging.getLogger(__name__)

#: The prompt groups every run answers, in this order.
SETS = ("eval", "positive", "negative")
#: Longest window in which the reference text is scored.
MAX_WINDOW = 1024


@dataclass(frozen=True)
class EvalInputs:
    """Everything a run is asked, tokenised once.

    Attributes:
        prompts: ``{"eval": ..., "positive": held-out positive, "negative": held-out negative}`` prompt texts.
        ids: The same prompts as token ids, rendered as in calibration (chat template when asked and available).
        reference: The reference text as token windows.
        anchors: The held-out positive and negative prompts as plain text token ids (the concept score's anchors).
        refusal_ids: Token ids of :data:`~bakesteer.metrics.REFUSAL_OPENERS`.
        eos_ids: Token ids that end a completion.
        pad_id: The padding id.
        eval_set: ``PromptSet.describe()`` of the eval prompts.
        long: How many eval prompts (the first ones) are also answered at length for the degeneration gate.
        prompted: With a baseline prompt, :attr:`ids` rendered after it as a system turn.
    """

    prompts: dict[str, tuple[str, ...]]
    ids: dict[str, list[list[int]]]
    reference: list[list[int]]
    anchors: dict[str, list[list[int]]]
    refusal_ids: tuple[int, ...]
    eos_ids: tuple[int, ...]
    pad_id: int
    eval_set: dict[str, Any]
    long: int = 0
    prompted: dict[str, list[list[int]]] | None = None
    context: int | None = None

    def long_budget(self, tokens: int) -> int:
        """Tokens a long answer may have: ``tokens``, within the model's context after the longest long prompt."""
        if self.context is None or not self.long:
            return tokens
        return max(1, min(tokens, self.context - max(len(ids) for ids in self.ids["eval"][: self.long])))

    def with_baseline(self) -> EvalInputs:
        """The same inputs, every prompt after the baseline system prompt."""
        assert self.prompted is not None
        return dataclasses.replace(self, ids=self.prompted, prompted=None)

    @property
    def long_prompts(self) -> tuple[str, ...]:
        """The eval prompts answered at length."""
        return self.prompts["eval"][: self.long]

    @property
    def heldout_ids(self) -> list[list[int]]:
        """Held-out positive then negative prompts: the rows of :attr:`RunOutputs.first_logits`."""
        return self.ids["positive"] + self.ids["negative"]


@dataclass
class RunOutputs:
    """What one model (steered or not) produced on :class:`EvalInputs`.

    Attributes:
        first_logits: ``[n_pos + n_neg, V]`` float32 raw logits at the first generated position of the held-out
            positive then negative prompts.
        completions: ``{set: [token ids]}`` greedy completions, cut before the first end-of-sequence token.
        texts: The completions decoded (special tokens skipped).
        perplexity: Perplexity of the reference text under this model.
        long_texts: The long answers to :attr:`EvalInputs.long_prompts`.
    """

    first_logits: torch.Tensor
    completions: dict[str, list[list[int]]]
    texts: dict[str, list[str]]
    perplexity: float
    long_texts: list[str] = field(default_factory=list)


@dataclass
class BaseReading:
    """What the unsteered base model measures on a run's eval completions."""

    fluency: float | None
    concept: float | None
    concept_per_sample: list[float | None] = field(default_factory=list)


def _token_ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=True)["input_ids"])


def eos_token_ids(model: Any, tokenizer: Any) -> tuple[int, ...]:
    """The ids that end a completion: the generation config's ``eos_token_id`` (an int or a list) and the
    tokenizer's."""
    ids: list[int] = []
    for value in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, int) and item not in ids:
                ids.append(item)
    return tuple(ids)


def refusal_token_ids(tokenizer: Any) -> tuple[int, ...]:
    """The first token of each refusal opener, as the tokenizer writes it at the start of an answer."""
    out: list[int] = []
    for word in REFUSAL_OPENERS:
        ids = tokenizer(word, add_special_tokens=False)["input_ids"]
        if ids and ids[0] not in out:
            out.append(int(ids[0]))
    return tuple(out)


def prepare_inputs(
    tokenizer: Any,
    *,
    positive: PromptSet,
    negative: PromptSet,
    eval_set: PromptSet,
    reference_text: str,
    chat_template: bool,
    eos_ids: tuple[int, ...],
    pad_id: int,
    max_positions: int | None,
    long: int = 0,
    baseline_prompt: str | None = None,
) -> EvalInputs:
    """Tokenise the eval prompts (all of them), the held-out parts of both sets, the reference text and anchors
    (and, with ``baseline_prompt``, every prompt after it as a system turn)."""
    prompts = {"eval": eval_set.prompts, "positive": positive.heldout, "negative": negative.heldout}
    ids = {name: render_prompts(tokenizer, texts, chat_template=chat_template) for name, texts in prompts.items()}
    prompted = None
    if baseline_prompt:
        prompted = {
            name: render_prompts(tokenizer, texts, chat_template=chat_template, system=baseline_prompt)
            for name, texts in prompts.items()
        }
    window = min(MAX_WINDOW, max_positions or MAX_WINDOW)
    reference_ids = _token_ids(tokenizer, reference_text)
    reference = [reference_ids[i : i + window] for i in range(0, len(reference_ids), window)]
    reference = [chunk for chunk in reference if len(chunk) > 1]
    anchors = {role: [_token_ids(tokenizer, p) for p in prompts[role]] for role in ("positive", "negative")}
    return EvalInputs(
        prompts=prompts,
        ids=ids,
        reference=reference,
        anchors=anchors,
        refusal_ids=refusal_token_ids(tokenizer),
        eos_ids=eos_ids,
        pad_id=pad_id,
        eval_set=eval_set.describe(),
        long=min(long, len(eval_set.prompts)),
        prompted=prompted,
        context=max_positions,
    )


# --------------------------------------------------------------------------- what a model produces


@torch.no_grad()
def greedy_completions(
    model: Any,
    sequences: list[list[int]],
    *,
    max_new_tokens: int,
    batch_size: int,
    pad_id: int,
    eos_ids: tuple[int, ...],
) -> list[list[int]]:
    """Greedy completions (KV cache, left-padded batches, longest first), each cut before its first EOS.

    An explicit generation config is used, so a checkpoint's sampling defaults or repetition penalty never apply.
    """
    from transformers import GenerationConfig

    config = GenerationConfig(
        do_sample=False,
        max_new_tokens=max_new_tokens,
        eos_token_id=list(eos_ids) or None,
        pad_token_id=pad_id,
        use_cache=True,
    )
    device = input_device(model)
    out: dict[int, list[int]] = {}
    for batch in left_padded_batches(sequences, batch_size, pad_id):
        batch = batch.to(device)
        generated = model.generate(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, generation_config=config
        )
        width = batch.input_ids.shape[1]
        for row, index in enumerate(batch.indices):
            tokens = generated[row, width:].tolist()
            cut = next((i for i, t in enumerate(tokens) if t in eos_ids), len(tokens))
            out[index] = tokens[:cut]
    return [out[i] for i in range(len(sequences))]


@torch.no_grad()
def continuation_nll(
    model: Any, sequences: list[list[int]], starts: list[int], *, batch_size: int, pad_id: int, chunk: int = 128
) -> tuple[float, int]:
    """Summed negative log-likelihood (nats, float64) of ``sequences[i][starts[i]:]``, each token predicted from
    the ones before it, and the number of tokens scored. ``starts[i] >= 1``.

    Only the positions that predict a scored token go through the LM head (``logits_to_keep``): a prompt's
    positions cost the decoder stack, not a ``[tokens, vocab]`` projection.
    """
    device = input_device(model)
    total, count = 0.0, 0
    for batch in left_padded_batches(sequences, batch_size, pad_id):
        batch = batch.to(device)
        width = batch.input_ids.shape[1]
        # left padding: row r's first scored token sits at width - len + start; keep every position from the
        # earliest one that predicts a scored token (the positions before it need no logits)
        firsts = [width - len(sequences[i]) + max(starts[i], 1) for i in batch.indices]
        keep = width - (min(firsts) - 1)
        logits = model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            use_cache=False,
            logits_to_keep=keep,
        ).logits  # [B, keep, V]: logits[:, j] belongs to position width - keep + j
        for row, first in enumerate(firsts):
            targets = batch.input_ids[row, first:]
            predicted = logits[row, first - 1 - (width - keep) : keep - 1]
            for s in range(0, targets.shape[0], chunk):
                log_probs = torch.log_softmax(predicted[s : s + chunk].double(), dim=-1)
                total -= float(log_probs.gather(-1, targets[s : s + chunk, None]).sum())
            count += int(targets.shape[0])
    return total, count


def run_outputs(
    model: Any,
    tokenizer: Any,
    inputs: EvalInputs,
    options: Any,
    *,
    reference_perplexity: float | None = None,
) -> RunOutputs:
    """Everything ``model`` (in whatever steering state the caller set up) produces on ``inputs``.

    Args:
        options: A ``ConvertOptions``: ``max_new_tokens``, ``batch_size`` and ``generation_batch_size`` are read.
        reference_perplexity: A known perplexity of the reference text for this steering state (last-token steering
            reads the text as generated tokens, which is broadcast steering): skip measuring it again.
    """
    from bakesteer.validation import last_token_logits

    first = last_token_logits(
        model, inputs.heldout_ids, batch_size=options.batch_size, pad_id=inputs.pad_id, desc="first-token logits"
    )
    everything = [seq for name in SETS for seq in inputs.ids[name]]
    generated = greedy_completions(
        model,
        everything,
        max_new_tokens=options.max_new_tokens,
        batch_size=options.generation_batch_size,
        pad_id=inputs.pad_id,
        eos_ids=inputs.eos_ids,
    )
    completions: dict[str, list[list[int]]] = {}
    offset = 0
    for name in SETS:
        completions[name] = generated[offset : offset + len(inputs.ids[name])]
        offset += len(inputs.ids[name])
    texts = {
        name: [tokenizer.decode(c, skip_special_tokens=True).strip() for c in seqs]
        for name, seqs in completions.items()
    }
    if reference_perplexity is None:
        nll, count = continuation_nll(
            model, inputs.reference, [1] * len(inputs.reference), batch_size=options.batch_size, pad_id=inputs.pad_id
        )
        reference_perplexity = perplexity(nll, count)
    long_texts: list[str] = []
    if inputs.long:
        long = greedy_completions(
            model,
            inputs.ids["eval"][: inputs.long],
            max_new_tokens=inputs.long_budget(options.long_tokens),
            batch_size=options.generation_batch_size,
            pad_id=inputs.pad_id,
            eos_ids=inputs.eos_ids,
        )
        long_texts = [tokenizer.decode(c, skip_special_tokens=True).strip() for c in long]
    return RunOutputs(first, completions, texts, reference_perplexity, long_texts)


# --------------------------------------------------------------------------- what the base model reads


@dataclass(frozen=True)
class ConceptProbe:
    """The concept score's scale: the band's middle layer, its direction and the anchors' mean projections."""

    layer: int
    direction: torch.Tensor
    negative_mean: float
    positive_mean: float

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "negative_mean": self.negative_mean, "positive_mean": self.positive_mean}


def middle_layer(band: tuple[int, int]) -> int:
    """The middle layer of a band ``[start, end)`` (the lower one of two)."""
    return (band[0] + band[1] - 1) // 2


def concept_probe(
    base: Any, spec: Any, inputs: EvalInputs, directions: torch.Tensor, band: tuple[int, int], *, batch_size: int
) -> ConceptProbe:
    """Read the held-out prompts as plain text with the base model and fix the concept score's 0 and 1."""
    from bakesteer.calibration import sequence_residuals

    layer = middle_layer(band)
    direction = directions[layer].double()
    means = {}
    for role in ("positive", "negative"):
        residuals = sequence_residuals(
            base, spec, inputs.anchors[role], layers=[layer], reduce="mean", batch_size=batch_size, pad_id=inputs.pad_id
        )
        means[role] = float((residuals[:, 0] @ direction).mean())
    return ConceptProbe(layer, direction, means["negative"], means["positive"])


def base_reading(
    base: Any,
    spec: Any,
    tokenizer: Any,
    inputs: EvalInputs,
    run: RunOutputs,
    probe: ConceptProbe,
    *,
    batch_size: int,
) -> BaseReading:
    """Fluency and the concept score of ``run``'s eval completions, measured by the unsteered ``base``."""
    from bakesteer.calibration import sequence_residuals

    prompts, completions = inputs.ids["eval"], run.completions["eval"]
    scored = [i for i, c in enumerate(completions) if c]
    fluency = None
    if scored:
        nll, count = continuation_nll(
            base,
            [prompts[i] + completions[i] for i in scored],
            [len(prompts[i]) for i in scored],
            batch_size=batch_size,
            pad_id=inputs.pad_id,
        )
        fluency = perplexity(nll, count)
    read = [_token_ids(tokenizer, text) for text in run.texts["eval"]]
    readable = [i for i, ids in enumerate(read) if len(ids) >= 2]  # position 0 is excluded: one token says nothing
    per_sample: list[float | None] = [None] * len(read)
    concept = None
    if readable:
        residuals = sequence_residuals(
            base,
            spec,
            [read[i] for i in readable],
            layers=[probe.layer],
            reduce="mean",
            batch_size=batch_size,
            pad_id=inputs.pad_id,
        )
        scores = scaled_projection(residuals[:, 0] @ probe.direction, probe.negative_mean, probe.positive_mean)
        for i, score in zip(readable, scores.tolist(), strict=True):
            per_sample[i] = score
        concept = float(scores.mean())
    return BaseReading(fluency, concept, per_sample)


# --------------------------------------------------------------------------- the metrics of a run


def run_metrics(base: RunOutputs, run: RunOutputs, reading: BaseReading, inputs: EvalInputs) -> dict[str, Any]:
    """The metrics of ``run`` against the ``base`` run (see the module docstring for each recipe)."""
    n_pos = len(inputs.ids["positive"])
    kl = first_token_kl(base.first_logits[n_pos:], run.first_logits[n_pos:])
    extra: dict[str, Any] = {}
    if inputs.long:
        own = degeneration.summarize(inputs.long_prompts, run.long_texts)
        extra["degenerate"] = degeneration.flag(own, degeneration.summarize(inputs.long_prompts, base.long_texts))
    return {
        "kl": float(kl.mean()),
        "perplexity": run.perplexity,
        "fluency": reading.fluency,
        "repetition": repetition_rate(run.completions["eval"]),
        "concept": reading.concept,
        "refusal_rate": {
            "positive": refusal_rate(run.texts["positive"]),
            "negative": refusal_rate(run.texts["negative"]),
        },
        "refusal_score": float(refusal_log_odds(run.first_logits, inputs.refusal_ids).mean()),
        **extra,
    }


def run_samples(inputs: EvalInputs, run: RunOutputs) -> list[dict[str, Any]]:
    """Every prompt and completion of a run (the long answers as set ``long``), so anyone can judge them again."""
    samples: list[dict[str, Any]] = [
        {"set": name, "prompt": prompt, "completion": text}
        for name in SETS
        for prompt, text in zip(inputs.prompts[name], run.texts[name], strict=True)
    ]
    samples += [
        {"set": "long", "prompt": prompt, "completion": text}
        for prompt, text in zip(inputs.long_prompts, run.long_texts, strict=True)
    ]
    return samples
