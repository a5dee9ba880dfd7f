"""PNG plots drawn with matplotlib (Agg, no display): ``mu_l`` by layer, direction quality by layer, and each sweep
metric against ``k``.

The figures are built with ``matplotlib.figure.Figure`` directly (no pyplot global state) and saved without the
``Software`` tag, so the same numbers give the same bytes.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

from bakesteer.metric_table import METRICS, Metric

_BAND_COLOUR = "#ffe4c4"


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _shade_band(axes: Any, band: tuple[int, int]) -> None:
    axes.axvspan(band[0] - 0.5, band[1] - 0.5, color=_BAND_COLOUR, zorder=0, label=f"band {band[0]}-{band[1] - 1}")


def plot_mu(mu: Sequence[float], band: tuple[int, int]) -> bytes:
    """``mu_l`` by layer (0-based), the steered band shaded, as PNG bytes."""
    figure = _figure(6.4, 3.2)
    axes = figure.add_subplot()
    _shade_band(axes, band)
    axes.plot(range(len(mu)), mu, marker="o", markersize=3, color="#1f77b4", label="mean residual norm mu_l")
    axes.set_xlabel("layer (0-based)")
    axes.set_ylabel("mu_l")
    axes.set_ylim(bottom=0)
    axes.legend(loc="upper left", fontsize="small")
    return _png(figure)


def plot_layers(mu: Sequence[float], auroc: Sequence[float | None], band: tuple[int, int]) -> bytes:
    """Two panels by layer: ``mu_l`` and the AUROC of the held-out prompts projected on ``c_l``; band shaded."""
    figure = _figure(7.0, 5.0)
    top, bottom = figure.subplots(2, 1, sharex=True)
    for axes in (top, bottom):
        _shade_band(axes, band)
    top.plot(range(len(mu)), mu, marker="o", markersize=3, color="#1f77b4")
    top.set_ylabel("mu_l")
    top.set_ylim(bottom=0)
    values = [math.nan if a is None else a for a in auroc]
    bottom.plot(range(len(values)), values, marker="o", markersize=3, color="#d62728")
    bottom.axhline(0.5, color="grey", linewidth=0.8, linestyle="--")
    bottom.set_ylim(0.0, 1.02)
    bottom.set_ylabel("AUROC of c_l (held out)")
    bottom.set_xlabel("layer (0-based)")
    top.legend(loc="upper left", fontsize="small")
    return _png(figure)


def plot_sweep(
    runs: Sequence[dict[str, Any]],
    *,
    chosen: float | None = None,
    panels: Sequence[Metric] = METRICS,
) -> bytes:
    """Each metric against ``k``, one line per steering mode; a dotted line at ``chosen`` when given.

    Args:
        runs: ``{"alpha", "mode", "metrics"}`` records, as in ``sweep.json``.
    """
    modes = list(dict.fromkeys(run["mode"] for run in runs))
    columns = 4
    rows = math.ceil(len(panels) / columns)
    figure = _figure(3.2 * columns, 2.6 * rows)
    grid = figure.subplots(rows, columns, squeeze=False)
    for i, panel in enumerate(panels):
        axes = grid[i // columns][i % columns]
        for mode in modes:
            points = sorted((run["alpha"], panel.value(run["metrics"])) for run in runs if run["mode"] == mode)
            axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3, label=mode)
        if panel.log:
            axes.set_yscale("log")
        if chosen is not None:
            axes.axvline(chosen, color="black", linestyle=":", linewidth=1, label=f"chosen k = {chosen:g}")
        axes.set_title(panel.title, fontsize="small")
        axes.set_xlabel("k")
        axes.tick_params(labelsize="small")
    for j in range(len(panels), rows * columns):
        grid[j // columns][j % columns].set_visible(False)
    grid[0][0].legend(fontsize="x-small")
    return _png(figure)
