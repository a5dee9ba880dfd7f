"""The ``publish`` variants file: parsed and checked into :class:`Variant` records, with nothing loaded, resolved or
contacted (:mod:`bakesteer.publish` runs them).

The format (TOML or YAML) is described in :mod:`bakesteer.publish` and ``bakesteer publish --help``.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bakesteer.errors import BakesteerError, VariantsFileError
from bakesteer.options import AUTO, ConvertOptions

DEFAULT_PROMPT_SET = "refusal"
#: Options publish sets itself, and the variants-file key that sets each.
MANAGED = {
    "alpha": "alphas",
    "vector": "(publish calibrates once per model)",
    "positive": "[[prompt_sets]]",
    "negative": "[[prompt_sets]]",
    "push_to_hub": "repo",
    "push_branch": "branch",
}
_MODEL_KEYS = {"model", "alphas", "repo", "branch", "prompt_sets"}
_OPTION_NAMES = {f.name for f in dataclasses.fields(ConvertOptions)} - set(MANAGED)
_HINT = "see `bakesteer publish --help` for the file's format"


@dataclass(frozen=True)
class Variant:
    """One checkpoint to publish.

    Attributes:
        model: MODEL to load: a Hub id, or a directory or ``.gguf`` file (a relative path in the file is resolved
            against the file's directory).
        label: MODEL as written in the file (used in reports: no local paths).
        prompt_set: The prompt set's name.
        alpha: ``k``, or ``"auto"`` (chosen by a sweep at conversion).
        repo_id: Target ``OWNER/NAME``.
        branch: Target branch.
        options: Every convert option of this variant (``alpha``, ``positive``/``negative`` included).
        group: Variants with the same group share one calibration (same model, revision, prompt sets and
            calibration options, even across ``[[models]]`` entries).
    """

    model: str
    label: str
    prompt_set: str
    alpha: float | str
    repo_id: str
    branch: str
    options: ConvertOptions
    group: int

    @property
    def target(self) -> str:
        return f"{self.repo_id}@{self.branch}"

    @property
    def group_id(self) -> str:
        """The calibration group as ``publish --group`` and ``--plan-json`` name it: ``g<N>-<model>-<prompt set>``
        (letters, digits, ``._-`` only, so it can name a CI job and its artifacts)."""
        short = Path(self.label).name.removesuffix(".gguf")
        return f"g{self.group}-" + re.sub(r"[^A-Za-z0-9._-]+", "-", f"{short}-{self.prompt_set}").strip("-")

    @property
    def output_name(self) -> str:
        """A directory name for this variant's output: ``OWNER--NAME`` (``@BRANCH`` unless main)."""
        return self.repo_id.replace("/", "--") + ("" if self.branch == "main" else f"@{self.branch}")


# --------------------------------------------------------------------------- the variants file


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise VariantsFileError(path.name, reason="file not found", hint="pass a .toml or .yaml variants file")
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8")
        if suffix == ".toml":
            import tomllib

            data: Any = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            raise VariantsFileError(path.name, reason=f"unknown format {suffix!r}", hint="use .toml, .yaml or .yml")
    except VariantsFileError:
        raise
    except Exception as err:  # tomllib.TOMLDecodeError, yaml.YAMLError, UnicodeDecodeError
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise VariantsFileError(path.name, reason=f"cannot parse it ({first})", hint=_HINT) from None
    if not isinstance(data, dict):
        raise VariantsFileError(path.name, reason="the top level must be a table/mapping", hint=_HINT)
    return data


def _option_value(name: str, value: Any, where: str, file: str, base_dir: Path) -> Any:
    """Type-check one convert option from the file against the dataclass annotation; a path option is a string
    relative to the file's directory."""
    kind = typing.get_type_hints(ConvertOptions)[name]
    if ConvertOptions.field(name).metadata.get("path"):
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise VariantsFileError(file, reason=f"{where}: {name} must be a path string, not {value!r}", hint=_HINT)
        return _prompt_or_path(value, f"{where}: {name}", file, base_dir)
    if name == "rubric" and isinstance(value, str):
        from bakesteer.judge import RUBRICS

        # a shipped rubric by name, or a template file relative to the variants file
        return value if value in RUBRICS else str(_prompt_or_path(value, f"{where}: {name}", file, base_dir))
    base = {int: int, float: float, bool: bool, str: str}.get(kind)
    if base is None:  # Optional[str] and the like
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        base = args[0] if args else str
        if value is None:
            return None
    ok = isinstance(value, base) and not (base is not bool and isinstance(value, bool))
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        ok, value = True, float(value)
    if not ok:
        raise VariantsFileError(file, reason=f"{where}: {name} must be a {base.__name__}, not {value!r}", hint=_HINT)
    return value


def _prompt_or_path(value: str, where: str, file: str, base_dir: Path) -> Path | str:
    """A path in the file, relative to its directory, that must exist (``FILE.parquet#COLUMN``: the file part); a Hub
    dataset name (``hf://datasets/...``) is kept as written."""
    from bakesteer.prompt_sources import is_hub_dataset

    if is_hub_dataset(value):
        return value
    path = Path(value).expanduser()
    path = path if path.is_absolute() else base_dir / path
    if not Path(str(path).split("#", 1)[0]).is_file():
        raise VariantsFileError(file, reason=f"{where} file {value!r} not found", hint="paths are relative to the file")
    return path


def _options_table(table: Any, where: str, file: str, allowed: set[str], base_dir: Path) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise VariantsFileError(file, reason=f"{where} must be a table/mapping", hint=_HINT)
    out: dict[str, Any] = {}
    for key, value in table.items():
        if key in allowed:
            continue
        if key in MANAGED:
            raise VariantsFileError(
                file, reason=f"{where}: {key!r} is set by publish", hint=f"use {MANAGED[key]} instead"
            )
        if key not in _OPTION_NAMES:
            raise VariantsFileError(
                file,
                reason=f"{where}: unknown key {key!r}",
                hint=f"allowed: {', '.join(sorted(allowed | _OPTION_NAMES))}",
            )
        out[key] = _option_value(key, value, where, file, base_dir)
    return out


def _prompt_sets(data: dict[str, Any], base: Path, file: str) -> dict[str, tuple[Any, Any]]:
    entries = data.get("prompt_sets", [{"name": DEFAULT_PROMPT_SET}])
    if not isinstance(entries, list) or not entries:
        raise VariantsFileError(file, reason="prompt_sets must be a non-empty list", hint=_HINT)
    sets: dict[str, tuple[Any, Any]] = {}
    for i, entry in enumerate(entries):
        where = f"prompt_sets[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
            raise VariantsFileError(file, reason=f"{where} needs a name", hint=_HINT)
        unknown = set(entry) - {"name", "positive", "negative"}
        if unknown:
            raise VariantsFileError(
                file, reason=f"{where}: unknown key {sorted(unknown)[0]!r}", hint="allowed: name, positive, negative"
            )
        if entry["name"] in sets:
            raise VariantsFileError(file, reason=f"prompt set {entry['name']!r} is declared twice", hint=_HINT)
        paths: list[Path | str | None] = []
        for role in ("positive", "negative"):
            value = entry.get(role)
            if value is None:
                paths.append(None)
                continue
            if not isinstance(value, str) or not value:
                raise VariantsFileError(file, reason=f"{where}: {role} must be a path string", hint=_HINT)
            paths.append(_prompt_or_path(value, f"{where}: {role}", file, base))
        sets[entry["name"]] = (paths[0], paths[1])
    return sets


def _label(alpha: float | str) -> str:
    return alpha if isinstance(alpha, str) else format(alpha, "g")


def _alphas(value: Any, where: str, file: str) -> list[float | str]:
    """The ``alphas`` list: numbers, and at most one ``"auto"``."""
    ok = isinstance(value, list) and value
    items: list[float | str] = []
    for a in value if ok else []:
        if isinstance(a, str) and a.strip().lower() == AUTO:
            items.append(AUTO)
        elif isinstance(a, (int, float)) and not isinstance(a, bool):
            items.append(float(a))
        else:
            ok = False
    if not ok:
        raise VariantsFileError(
            file, reason=f'{where}: alphas must be a non-empty list of numbers or "auto"', hint=_HINT
        )
    if len(set(items)) != len(items):
        raise VariantsFileError(file, reason=f"{where}: alphas has a repeated value", hint="list each k once")
    return items


def _fill(template: Any, where: str, key: str, file: str, **values: str) -> str:
    if not isinstance(template, str) or not template:
        raise VariantsFileError(file, reason=f"{where}: {key} must be a non-empty string", hint=_HINT)
    try:
        return template.format(**values)
    except (KeyError, IndexError, ValueError) as err:
        raise VariantsFileError(
            file,
            reason=f"{where}: {key} {template!r} has an unknown placeholder ({err})",
            hint="placeholders: {model} {alpha} {prompt_set}",
        ) from None


def _check_repo_id(repo_id: str, where: str, file: str) -> None:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
        valid = repo_id.count("/") == 1
    except HFValidationError:
        valid = False
    if not valid:
        raise VariantsFileError(
            file,
            reason=f"{where}: {repo_id!r} is not a valid OWNER/NAME",
            hint="use letters, digits, '-', '_' and '.', e.g. repo = \"my-org/{model}-k{alpha}\"",
        )


def _calibration_key(model: str, options: ConvertOptions) -> tuple[Any, ...]:
    """What the steering vector depends on: variants that agree on it share one calibration."""
    names = [f.name for f in ConvertOptions.fields_in("calibration")] + ["revision", "dtype", "device", "batch_size"]
    return (model, *(getattr(options, name) for name in names))


def _check_options(options: ConvertOptions, where: str, file: str) -> None:
    try:
        options.check()
    except BakesteerError as err:
        raise VariantsFileError(file, reason=f"{where}: {err}", hint=err.hint) from None


def load_variants(path: Path) -> list[Variant]:
    """Parse and check a variants file; nothing is loaded, resolved or contacted.

    Raises:
        VariantsFileError: naming the file, the entry and the key at fault.
    """
    path = Path(path)
    file = path.name
    data = _read(path)
    unknown = set(data) - {"defaults", "prompt_sets", "models"}
    if unknown:
        raise VariantsFileError(
            file, reason=f"unknown top-level key {sorted(unknown)[0]!r}", hint="allowed: defaults, prompt_sets, models"
        )
    defaults = _options_table(data.get("defaults", {}), "defaults", file, set(), path.parent)
    _check_options(ConvertOptions(**defaults), "defaults", file)
    sets = _prompt_sets(data, path.parent, file)
    models = data.get("models")
    if not isinstance(models, list) or not models:
        raise VariantsFileError(file, reason="no [[models]] entries", hint=_HINT)

    variants: list[Variant] = []
    targets: dict[str, str] = {}
    groups: dict[tuple[Any, ...], int] = {}
    for i, entry in enumerate(models):
        where = f"models[{i}]"
        overrides = _options_table(entry, where, file, _MODEL_KEYS, path.parent)
        model = entry.get("model")
        if not isinstance(model, str) or not model:
            raise VariantsFileError(file, reason=f'{where} needs model = "OWNER/NAME" or a path', hint=_HINT)
        label = model
        if (path.parent / model).exists() or model.startswith((".", "/", "~")):
            model = str(path.parent / Path(model).expanduser())  # relative to the variants file
            label = Path(label).name
        where = f"models[{i}] ({label})"
        alphas = _alphas(entry.get("alphas"), where, file)
        names = entry.get("prompt_sets", list(sets))
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise VariantsFileError(file, reason=f"{where}: prompt_sets must be a list of names", hint=_HINT)
        for name in names:
            if name not in sets:
                raise VariantsFileError(
                    file, reason=f"{where}: unknown prompt set {name!r}", hint=f"declared: {', '.join(sets)}"
                )
        short = Path(label).name.removesuffix(".gguf")
        for name in names:
            positive, negative = sets[name]
            for alpha in alphas:
                values = {"model": short, "alpha": _label(alpha), "prompt_set": name}
                repo_id = _fill(entry.get("repo"), where, "repo", file, **values)
                _check_repo_id(repo_id, where, file)
                branch = _fill(entry.get("branch", "main"), where, "branch", file, **values)
                options = ConvertOptions(
                    **{**defaults, **overrides, "alpha": alpha, "positive": positive, "negative": negative}
                )
                _check_options(options, where, file)
                group = groups.setdefault(_calibration_key(model, options), len(groups))
                variant = Variant(model, label, name, alpha, repo_id, branch, options, group)
                if variant.target in targets:
                    raise VariantsFileError(
                        file,
                        reason=f"{targets[variant.target]} and {where} k={_label(alpha)} both publish to "
                        f"{variant.target}",
                        hint="give each variant its own repo or branch, e.g. with {alpha} in it",
                    )
                targets[variant.target] = f"{where} k={_label(alpha)}"
                variants.append(variant)
    return variants
