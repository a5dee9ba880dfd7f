"""What the CLI shows a person: each result as lines of text. Pure functions (no printing, no I/O), so that the CLI
stays a thin layer of parsing and the formats can be tested on their own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bakesteer.metric_table import METRICS, present


def metrics_table(rows: dict[str, dict[str, Any]]) -> str:
    """A fixed-width table, one row per labelled metrics dict, one column per metric of ``METRICS`` that the rows
    have (an optional metric, such as the judge's, only when some row has it)."""
    shown = present(METRICS, list(rows.values()))
    width = max(len(label) for label in rows) + 2
    lines = [" " * width + "".join(f"{m.short:>11}" for m in shown)]
    for label, metrics in rows.items():
        lines.append(f"{label:<{width}}" + "".join(f"{m.format(metrics):>11}" for m in shown))
    return "\n".join(lines)


def eval_rows(metrics: dict[str, dict[str, Any]], alpha: float) -> dict[str, dict[str, Any]]:
    """An evaluation's rows: the base, the prompted base (with ``--baseline-prompt``), the checkpoint."""
    rows = {"base": metrics["base"]}
    if "prompted" in metrics:
        rows["prompted base"] = metrics["prompted"]
    rows[f"k={alpha:g}"] = metrics["model"]
    return rows


def _run_label(alpha: float, mode: str) -> str:
    return "prompted base" if mode == "prompted" else f"k={alpha:g} {mode}"


def window_lines(window: dict[str, Any] | None) -> list[str]:
    """The window of k where the effect is present and coherence holds, with its dose, on each side."""
    if not window:
        return []
    lines = []
    for side in ("positive", "negative"):
        found = window.get(side)
        what = f"effect {window['effect']} moved >= {window['threshold']:g} from k=0, coherent"
        if found:
            lo, hi = found["k"]
            dose = found["dose"]
            lines.append(f"window ({side} k): k {lo:g} .. {hi:g}, dose {dose[0]:.3g} .. {dose[1]:.3g} ({what})")
        else:
            lines.append(f"window ({side} k): none measured ({what})")
    return lines


def degenerate_lines(runs: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """One line per run the degeneration gate flagged, with its reasons."""
    lines = []
    for label, metrics in runs:
        d = metrics.get("degenerate")
        if d and d.get("flagged"):
            found = ", ".join(f"{k} {v}" for k, v in d["reasons"].items() if v)
            lines.append(f"degenerate: {label}: {d['rate']:.0%} of {d['answers']} long answers ({found})")
    return lines


def convert_summary(result: Any, output: Path) -> str:
    """A conversion: band, offset norms, the validation numbers, where and how long."""
    v = result.validation
    start, end = result.band
    norms = list(result.offset_norms.values())
    layers = result.metadata["method"]["num_layers"]
    greedy = "equal" if v.greedy_equal else f"differ at step {v.greedy_first_mismatch}"
    return "\n".join(
        [
            f"baked k={result.alpha:g} into layers {start}-{end - 1} ({end - start} of {layers})",
            f"  offset norms      {min(norms):.4g} .. {max(norms):.4g}",
            f"  validation ({v.dtype}) max|dlogit| {v.max_abs_diff:.3g} = {v.relative_diff:.3g} of max|logit| "
            f"(tolerance {v.tolerance:.3g}: {v.tolerance_basis})",
            f"  mean KL {v.mean_kl:.3g}, greedy {v.greedy_tokens} tokens {greedy}, "
            f"baked vs base {v.base_relative_diff:.3g}",
            f"  output            {output}",
            f"  time              {result.seconds:.1f} s",
        ]
    )


def convert_extras(result: Any) -> list[str]:
    """After the summary: the ``--alpha auto`` decision and ``--eval``'s table, when they ran."""
    blocks = []
    if "sweep" in result.metadata:
        blocks.append(auto_summary(result.metadata["sweep"]))
    if "evaluation" in result.metadata:
        metrics = result.metadata["evaluation"]["metrics"]
        blocks.append(metrics_table(eval_rows(metrics, result.alpha)))
        blocks += degenerate_lines([(f"k={result.alpha:g}", metrics["model"])])
    return blocks


def up_to_date_line(repo_id: str, branch: str | None, fingerprint: str) -> str:
    """A ``--push-to-hub`` conversion whose target already holds its fingerprint."""
    return (
        f"{repo_id}@{branch or 'main'} already holds this conversion (fingerprint {fingerprint[:12]}): nothing "
        "converted or pushed; --force-push redoes it"
    )


def auto_summary(record: dict[str, Any]) -> str:
    """``--alpha auto``: the chosen k, why the grid stopped where it did, and every run's metrics."""
    kept = [d for d in record["decisions"] if d["kept"]]
    refused = next((d for d in record["decisions"] if not d["kept"] and not d.get("bisect")), None)
    why = f"; stopped at k={refused['alpha']:g} ({refused['why_not']})" if refused else "; every k kept"
    rows = {_run_label(run["alpha"], run["mode"]): run["metrics"] for run in record["runs"]}
    by = "the judged effect" if record.get("chosen_by") == "judge" else "the strongest coherent k"
    runs = record.get("runs_measured", len(record["runs"]))
    return "\n".join(
        [
            f"--alpha auto chose k={record['chosen']:g} by {by} ({runs} runs, {len(kept)} of "
            f"{len(record['decisions'])} steered kept{why})",
            metrics_table(rows),
            *window_lines(record.get("window")),
        ]
    )


def sweep_summary(model: str, result: Any, output: Path) -> str:
    """A sweep: its band, every run's metrics, and the direction's best held-out AUROC."""
    start, end = result.band
    best = max((a for a in result.auroc if a is not None), default=float("nan"))
    return "\n".join(
        [
            f"swept {model} over layers {start}-{end - 1} in {result.seconds:.1f} s",
            metrics_table({_run_label(r.alpha, r.mode): r.metrics for r in result.runs}),
            *degenerate_lines([(_run_label(r.alpha, r.mode), r.metrics) for r in result.runs]),
            *window_lines(result.to_dict(samples=False)["window"]),
            f"direction AUROC (held out) up to {best:.3f}; written to {output}",
        ]
    )


def push_summary(result: Any) -> str:
    """A push: the commit and what it changed, or that nothing changed."""
    if result.commit is None:
        return f"{result.repo_id}@{result.branch} is up to date ({len(result.unchanged)} files): no commit"
    return (
        f"pushed {result.repo_id}@{result.branch} commit {result.commit[:12]}: {len(result.uploaded)} uploaded, "
        f"{len(result.deleted)} deleted, {len(result.unchanged)} unchanged"
    )


def outcome_line(outcome: Any) -> str:
    """One publish variant's outcome."""
    v = outcome.variant
    k = v.alpha if isinstance(v.alpha, str) else f"{v.alpha:g}"
    head = f"{outcome.status:<13} {v.target}  k={k} {v.prompt_set} ({v.label})"
    if outcome.status == "failed":
        return f"{head}: {outcome.error}"
    if outcome.status in ("published", "unchanged"):
        detail = f"commit {outcome.commit[:12]}" if outcome.commit else "no change on the Hub"
        rel = outcome.validation["relative_diff"] if outcome.validation else float("nan")
        return f"{head}: {detail}, validation {rel:.3g}, {outcome.seconds:.1f} s"
    return f"{head}: {outcome.reason}"


def publish_totals(report: Any) -> str:
    """A publish run's counts by status and its number of calibrations."""
    counts = ", ".join(f"{n} {status}" for status, n in sorted(report.counts().items()))
    return f"{len(report.outcomes)} variants: {counts}; {report.calibrations} calibration(s)"


def export_line(item: Any) -> str:
    """One exported file: a GGUF checkpoint (a path) or a control vector."""
    if isinstance(item, Path):
        return f"wrote {item} ({item.stat().st_size / 2**20:.1f} MiB)"
    return (
        f"wrote {item.path}: {len(item.blocks)} directions (blocks {item.band[0]}-{item.band[1] - 1}, "
        f"k={item.alpha:g}, model hint {item.model_type}); llama.cpp: --control-vector {item.path}"
    )


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def demo_report(result: Any) -> str:
    """The demo: each prompt with the base and the baked answer and their concept scores, then the metrics of all
    the demo prompts side by side."""
    report = result.report
    lines = [
        "",
        f"concept score: 0 = as gloomy as the gloomy prompts, 1 = as joyful as the joyful ones (read by the base model "
        f"at layer {report.concept['layer']})",
    ]
    for prompt, base, base_score, baked, baked_score in result.answers:
        lines += [
            "",
            f"> {prompt}",
            f"  base  [{_score(base_score)}]: {base}",
            f"  baked [{_score(baked_score)}]: {baked}",
        ]
    prompts = report.eval_set["prompts"]
    lines += ["", f"all {prompts} demo prompts, {report.settings['max_new_tokens']} tokens:"]
    lines.append(metrics_table(eval_rows(report.metrics, report.alpha)))
    lines += degenerate_lines([(f"k={report.alpha:g}", report.metrics["model"])])
    return "\n".join(lines)
