"""The model card: rendered from ``model_cards/bakesteer.md.j2`` through huggingface_hub's ``ModelCard``, with a
plot of ``mu_l`` by layer saved beside the weights. Nothing local (paths, user names, tokens) goes into it."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from bakesteer.metric_table import METRICS, present
from bakesteer.options import ConvertOptions
from bakesteer.record import CARD_FILE, MU_PLOT, SWEEP_PLOT, Record

#: Stands for the repository id in the card's usage snippet; ``bakesteer push`` replaces it with the real one.
REPO_PLACEHOLDER = "REPO_ID"


#: Recorded options the reproduce command leaves out: ``vector`` (the command calibrates again, which gives the same
#: vector) and those that do not shape the output.
_NOT_IN_COMMAND = ("vector",)


def command_line(record: Record) -> str:
    """The ``bakesteer convert`` command that reproduces the output: every recorded option that is not the default,
    quoted for a POSIX shell (``shlex`` parses it back), no publish flags, ``OUTPUT`` for the output directory."""
    import shlex

    defaults = ConvertOptions().to_dict()
    recorded = record.options
    base = record.base_model
    parts = ["bakesteer", "convert", base["model_id"]]
    for f in ConvertOptions.fields_in():
        if f.name not in recorded or f.name in _NOT_IN_COMMAND or recorded[f.name] == defaults[f.name]:
            continue
        value = recorded[f.name]
        flag = (f.metadata.get("flag") or "--" + f.name.replace("_", "-")).split("/")
        if isinstance(value, bool):
            parts.append(flag[0] if value else flag[-1])
        else:
            parts += [flag[0], repr(value) if isinstance(value, float) else str(value)]  # repr: exact round trip
    if not recorded.get("revision") and base["kind"] == "hub" and base["revision"]:
        parts += ["--revision", base["revision"]]
    return shlex.join([*parts, "--output", "OUTPUT"])


#: License fields of a model card's metadata that travel with the steered copy.
LICENSE_FIELDS = ("license", "license_name", "license_link")


def source_license(directory: Path) -> dict[str, str]:
    """The ``license`` of the source's model card, with ``license_name`` and ``license_link`` (which a
    ``license: other`` needs to mean anything), when it has them."""
    from huggingface_hub import ModelCard

    path = directory / CARD_FILE
    if not path.is_file():
        return {}
    data = ModelCard.load(path).data.to_dict()
    return {key: str(data[key]) for key in LICENSE_FIELDS if data.get(key)}


_STRATEGY_TEXT = {
    "existing_bias": "the offset was added to the existing bias on each steered block's MLP output.",
    "native_flag": "the config flag `{flag}` was switched on; the new biases are zero except on the MLP output.",
    "remap": "the config was remapped to `{target}`, an identical architecture whose flag creates the biases.",
    "remote_code": "no bias site exists in this architecture, so each block carries a `steering_vector` buffer that "
    "`modeling_steered.py` adds to its output.",
}


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else spec % value


def _metric_rows(evaluation: dict[str, Any] | None, *, positive: str, negative: str) -> list[tuple[str, ...]]:
    """The card's *Measured effect* rows: (what, this model, base model[, prompted base]), one per metric of
    :data:`METRICS` that was measured."""
    if not evaluation:
        return []
    measured = evaluation["metrics"]
    model, base = measured["model"], measured["base"]
    prompted = measured.get("prompted")
    layer = evaluation["concept"]["layer"]
    rubric = (evaluation.get("judge") or {}).get("rubric", {}).get("name", "")
    rows: list[tuple[str, ...]] = []
    for m in present(METRICS, list(measured.values())):
        row = [m.row.format(positive=positive, negative=negative, layer=layer, rubric=rubric), m.format(model)]
        row.append(m.base_note or m.format(base))
        if prompted is not None:
            row.append(m.format(prompted))
        rows.append(tuple(row))
    return rows


def card_template(name: str = "bakesteer.md.j2") -> str:
    """A template from ``model_cards/``: shipped as ``bakesteer.model_cards`` when installed, or read from the
    repository's top-level folder when bakesteer runs from a checkout."""
    import importlib.util

    if importlib.util.find_spec("bakesteer.model_cards") is not None:
        return resources.files("bakesteer.model_cards").joinpath(name).read_text(encoding="utf-8")
    return (Path(__file__).resolve().parents[1] / "model_cards" / name).read_text(encoding="utf-8")


def _card_data(record: Record, concept: str, license_: dict[str, str] | None, bias_sha256: str | None) -> Any:
    """The card's YAML: Hub metadata, the source's license, and the claim ``verify`` checks."""
    from huggingface_hub import ModelCardData

    base, method = record.base_model, record.method
    remote = record.strategy == "remote_code"
    tags = ["bakesteer", "steering", concept] + (["custom_code"] if remote else [])
    # base_model_relation is left unset: the Hub's relations (adapter, merge, quantized, finetune) describe training,
    # merging or compression, and a baked bias is none of them; base_model still links the source.
    return ModelCardData(
        base_model=base["model_id"] if base["kind"] == "hub" else None,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=tags,
        license=(license_ or {}).get("license"),
        license_name=(license_ or {}).get("license_name"),
        license_link=(license_ or {}).get("license_link"),
        base_model_revision=base["revision"],
        bakesteer={
            "k": method["k"],
            "band": [method["band"]["start"], method["band"]["end_exclusive"]],
            "dose": method["relative_strength"],
            "bias_shard_sha256": bias_sha256,
        },
    )


def render_card(record: Record, *, license_: dict[str, str] | None = None, bias_sha256: str | None = None) -> str:
    """The model card text (YAML front matter and body) for a conversion's record.

    Args:
        bias_sha256: SHA-256 of the bias shard, for the YAML's ``bakesteer`` block (``verify`` recomputes it).
    """
    from huggingface_hub import ModelCard

    method, arch, v = record.method, record.architecture, record.validation
    base = record.base_model
    positive, negative = record.calibration["positive"], record.calibration["negative"]
    concept = "refusal" if positive["name"].startswith("default:") else "custom-direction"
    names = (positive["name"].removeprefix("default:"), negative["name"].removeprefix("default:"))
    remote = record.strategy == "remote_code"
    data = _card_data(record, concept, license_, bias_sha256)
    flags = ", ".join(f"{k}={json.dumps(val)}" for k, val in arch["config_updates"].items())
    template = card_template()
    sweep = record.sweep
    sweep_rows = []
    in_sweep: list[Any] = []
    if sweep:
        in_sweep = [m for m in present(METRICS, [run["metrics"] for run in sweep["runs"]]) if m.sweep_header]
        kept = {d["alpha"]: "yes" if d["kept"] else f"no ({d['why_not']})" for d in sweep["decisions"]}
        sweep_rows = [
            (
                "prompted base" if run["mode"] == "prompted" else run["alpha"],
                [m.format(run["metrics"]) for m in in_sweep],
                "reference" if run["mode"] == "prompted" else kept.get(run["alpha"], "reference"),
            )
            for run in sweep["runs"]
        ]
    card = ModelCard.from_template(
        data,
        template_str=template,
        title=f"{base['model_id']} steered (k = {method['k']:g})",
        base_name=base["model_id"],
        version=record.version,
        remote_code=remote,
        positive=names[0],
        negative=names[1],
        concept=concept,
        k=method["k"],
        relative=method["relative_strength"],
        band_start=method["band"]["start"],
        band_end=method["band"]["end_exclusive"],
        band_spec=method["band"]["spec"],
        num_layers=method["num_layers"],
        offset_min=method["offset_norm_min"],
        offset_max=method["offset_norm_max"],
        strategy_text=_STRATEGY_TEXT[arch["strategy"]].format(
            flag=flags or "-", target=arch["config_updates"].get("model_type", "")
        ),
        plot=MU_PLOT,
        repo_id=REPO_PLACEHOLDER,
        v=v,
        readers=record.readers,
        command=command_line(record),
        verify_command=verify_command(record),
        verify_base={"local": "directory", "gguf": "GGUF file"}.get(base["kind"]),
        fingerprint=record.fingerprint,
        calibration_prompts=positive["calibration"] + negative["calibration"],
        auto=method.get("k_chosen_by") == "sweep",
        evaluation=record.evaluation,
        sweep=sweep,
        sweep_rows=sweep_rows,
        sweep_headers=[m.sweep_header for m in in_sweep],
        metric_rows=_metric_rows(record.evaluation, positive=names[0], negative=names[1]),
        sweep_plot=SWEEP_PLOT,
        fmt=_fmt,
        zip=zip,
        gguf=base if base["kind"] == "gguf" else None,
    )
    return str(card)


def verify_command(record: Record) -> str:
    """The ``bakesteer verify`` command a downloader runs (``REPO_ID`` until ``push`` fills it in)."""
    base = record.base_model
    if base["kind"] == "hub":
        return f"bakesteer verify {REPO_PLACEHOLDER}"
    return f"bakesteer verify {REPO_PLACEHOLDER} --base {base['model_id']}"


def write_card(directory: Path, record: Record, *, license_: dict[str, str] | None = None) -> None:
    """Write ``README.md``, ``mu.png`` and, after ``--alpha auto``, ``sweep.png`` into ``directory``."""
    from bakesteer.plots import plot_mu, plot_sweep

    (directory / MU_PLOT).write_bytes(plot_mu(record.method["mu"], record.band))
    if record.sweep:
        (directory / SWEEP_PLOT).write_bytes(plot_sweep(record.sweep["runs"], chosen=record.k))
    from bakesteer.source import sha256_contents
    from bakesteer.writer import NEW_SHARD

    shard = directory / NEW_SHARD
    digest = sha256_contents(shard) if shard.is_file() else None
    (directory / CARD_FILE).write_text(render_card(record, license_=license_, bias_sha256=digest), encoding="utf-8")
