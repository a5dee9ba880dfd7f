"""The one table of the metrics a measurement reports: how each is named, formatted, compared and drawn.

``sweep.csv``, the CLI's tables, the sweep plot and the model card all read :data:`METRICS`, so a metric added here
appears in each of them (the recipes themselves are in :mod:`bakesteer.measure` and :mod:`bakesteer.metrics`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class Metric:
    """One reported metric.

    Attributes:
        key: Where it sits in a metrics dict; dotted for a nested value (``refusal_rate.positive``).
        column: Its ``sweep.csv`` column.
        short: Its CLI table header (at most 10 characters).
        title: Its sweep-plot panel title.
        row: Its card row, with ``{positive}``, ``{negative}`` and ``{layer}`` (the concept probe's layer) filled in.
        fmt: printf-style format of a value.
        better: ``lower`` or ``higher`` when one way is better whatever the steering aims at; ``None`` when it
            depends on the concept (concept score, refusals).
        log: Drawn on a logarithmic axis.
        sweep_header: Its column header in the card's ``--alpha auto`` table; empty when the card leaves it out.
        base_note: What the card writes for the base model instead of a number (KL is 0 by definition).
        optional: Reported only where a measurement has it (the judge's, the degeneration gate's): the CLI tables,
            the plot and the card leave it out when no row has a value. ``sweep.csv`` always has its column.
    """

    key: str
    column: str
    short: str
    title: str
    row: str
    fmt: str
    better: Literal["lower", "higher"] | None
    log: bool = False
    sweep_header: str = ""
    base_note: str = ""
    optional: bool = False

    def raw(self, metrics: dict[str, Any]) -> Any:
        """The value as stored (``None`` when absent)."""
        value: Any = metrics
        for part in self.key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        return value

    def value(self, metrics: dict[str, Any]) -> float:
        """The value as a float; NaN when absent or ``None``."""
        value = self.raw(metrics)
        return math.nan if value is None else float(value)

    def format(self, metrics: dict[str, Any]) -> str:
        """The value formatted with :attr:`fmt`; ``-`` when absent, ``None`` or NaN."""
        value = self.value(metrics)
        return "-" if math.isnan(value) else self.fmt % value


METRICS: tuple[Metric, ...] = (
    Metric(
        "kl",
        "kl",
        "KL",
        "first-token KL vs base (nats)",
        "first-token KL from the base (nats, held-out *{negative}* prompts)",
        "%.3g",
        "lower",
        sweep_header="KL",
        base_note="0 (by definition)",
    ),
    Metric(
        "perplexity",
        "perplexity",
        "ppl",
        "perplexity of the reference text",
        "perplexity of a neutral reference text",
        "%.4g",
        "lower",
        log=True,
        sweep_header="perplexity",
    ),
    Metric(
        "fluency",
        "fluency",
        "fluency",
        "fluency: base perplexity of completions",
        "fluency: the base model's perplexity of the completions",
        "%.4g",
        "lower",
        log=True,
        sweep_header="fluency",
    ),
    Metric(
        "repetition",
        "repetition",
        "rep4",
        "repeated 4-grams (share)",
        "repeated 4-grams in the completions",
        "%.3f",
        "lower",
        sweep_header="repetition",
    ),
    Metric(
        "concept",
        "concept",
        "concept",
        "concept score (0 neg, 1 pos)",
        "concept score (0 = *{negative}*, 1 = *{positive}*, read by the base at layer {layer})",
        "%.3f",
        None,
        sweep_header="concept",
    ),
    Metric(
        "refusal_rate.positive",
        "refusal_rate_positive",
        "refuse+",
        "refusal rate, positive prompts",
        "refusal rate, held-out *{positive}* prompts",
        "%.2f",
        None,
    ),
    Metric(
        "refusal_rate.negative",
        "refusal_rate_negative",
        "refuse-",
        "refusal rate, negative prompts",
        "refusal rate, held-out *{negative}* prompts",
        "%.2f",
        None,
    ),
    Metric(
        "refusal_score",
        "refusal_score",
        "refusal lo",
        "refusal log-odds",
        "refusal log-odds of the first token",
        "%.3g",
        None,
    ),
    Metric(
        "degenerate.rate",
        "degenerate_rate",
        "degen",
        "degenerate long answers (share)",
        "long answers that degenerate (loop, unclosed <think>, script change)",
        "%.2f",
        "lower",
        sweep_header="degenerate",
        optional=True,
    ),
    Metric(
        "judge.score.eval",
        "judge_eval",
        "judge",
        "judged score, eval prompts",
        "judged score ({rubric}), eval prompts",
        "%.3f",
        None,
        sweep_header="judged",
        optional=True,
    ),
    Metric(
        "judge.score.positive",
        "judge_positive",
        "judge+",
        "judged score, positive prompts",
        "judged score ({rubric}), held-out *{positive}* prompts",
        "%.2f",
        None,
        sweep_header="judged +",
        optional=True,
    ),
    Metric(
        "judge.score.negative",
        "judge_negative",
        "judge-",
        "judged score, negative prompts",
        "judged score ({rubric}), held-out *{negative}* prompts",
        "%.2f",
        None,
        sweep_header="judged -",
        optional=True,
    ),
    Metric(
        "judge.unparseable",
        "judge_unparseable",
        "unparsed",
        "judge replies not parseable",
        "judge replies that could not be read (counted, not guessed)",
        "%.0f",
        "lower",
        optional=True,
    ),
)


def present(metrics: Sequence[Metric], rows: Sequence[dict[str, Any]]) -> tuple[Metric, ...]:
    """The metrics to show for ``rows`` (metrics dicts): every required one, and each optional one some row has."""
    return tuple(m for m in metrics if not m.optional or any(m.raw(row) is not None for row in rows))


def metric(key: str) -> Metric:
    """The metric stored under ``key``.

    Raises:
        KeyError: no such metric.
    """
    for m in METRICS:
        if m.key == key:
            return m
    raise KeyError(key)
