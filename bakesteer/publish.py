"""``publish``: a variants file (models x alphas x prompt sets) to Hub repositories, idempotently.

Every variant is fingerprinted *before* anything is converted (source commit or content digest, bakesteer version,
the options that shape the weights, the prompt-set hashes) and compared with the ``bakesteer.json`` already at its
target; an equal fingerprint means the variant is up to date and is skipped. For the rest, each model is calibrated
once per prompt set and the vector is reused for all of its alphas; each variant is then converted, validated and
pushed in one commit. A failed variant is recorded and the others still publish.

The variants file (TOML or YAML)::

    [defaults]                 # any convert option, by its Python name (dtype, layers, private, ...)
    dtype = "bfloat16"

    [[prompt_sets]]            # optional; without it, one set "refusal" (the shipped harmful/harmless prompts)
    name = "refusal"
    # positive = "harmful.txt" # paths are relative to the variants file
    # negative = "harmless.txt"

    [[models]]
    model = "HuggingFaceTB/SmolLM2-135M-Instruct"   # Hub id, local directory or .gguf file
    # revision = "main"
    alphas = [-1, 0.5, 1, "auto"]
    repo = "my-org/{model}-{prompt_set}-k{alpha}"   # placeholders: {model} {alpha} {prompt_set}
    # branch = "k{alpha}"                          # default main
    # prompt_sets = ["refusal"]                    # default: every declared set
    # layers = "0.3:0.8"                           # per-model convert options override [defaults]
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import tempfile
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bakesteer import __version__
from bakesteer.errors import BakesteerError, VariantsFileError
from bakesteer.fingerprint import fingerprint_of
from bakesteer.options import AUTO, ConvertOptions

logger = logging.getLogger(__name__)

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

Status = typing.Literal["published", "unchanged", "up-to-date", "would-publish", "failed"]


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
    def output_name(self) -> str:
        """A directory name for this variant's output: ``OWNER--NAME`` (``@BRANCH`` unless main)."""
        return self.repo_id.replace("/", "--") + ("" if self.branch == "main" else f"@{self.branch}")


@dataclass
class VariantOutcome:
    """What happened to one variant. ``status`` is one of published (a new commit), unchanged (converted, but the
    pushed files were identical: no commit), up-to-date (skipped before converting), would-publish (``dry_run``),
    failed."""

    variant: Variant
    status: Status
    reason: str = ""
    fingerprint: str | None = None
    source: dict[str, Any] | None = None
    commit: str | None = None
    error: str | None = None
    validation: dict[str, Any] | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        v = self.variant
        return {
            "model": v.label,
            "prompt_set": v.prompt_set,
            "alpha": v.alpha,
            "repo": v.repo_id,
            "branch": v.branch,
            "status": self.status,
            "reason": self.reason,
            "fingerprint": self.fingerprint,
            "source": self.source,
            "commit": self.commit,
            "error": self.error,
            "validation": self.validation,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class PublishReport:
    """Every variant's outcome, and how many calibrations ran."""

    outcomes: list[VariantOutcome] = field(default_factory=list)
    calibrations: int = 0
    dry_run: bool = False

    @property
    def failed(self) -> list[VariantOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for outcome in self.outcomes:
            out[outcome.status] = out.get(outcome.status, 0) + 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "bakesteer_version": __version__,
            "dry_run": self.dry_run,
            "calibrations": self.calibrations,
            "counts": self.counts(),
            "variants": [o.to_dict() for o in self.outcomes],
        }

    def write(self, path: Path) -> None:
        """Write the JSON report (through a temporary file, so a reader never sees half of it)."""
        path = Path(path)
        partial = path.with_name(f".{path.name}.partial")
        partial.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        partial.replace(path)


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
        path = Path(value).expanduser()
        path = path if path.is_absolute() else base_dir / path
        if not path.is_file():
            raise VariantsFileError(
                file, reason=f"{where}: {name} file {value!r} not found", hint="paths are relative to the file"
            )
        return path
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


def _prompt_sets(data: dict[str, Any], base: Path, file: str) -> dict[str, tuple[Path | None, Path | None]]:
    entries = data.get("prompt_sets", [{"name": DEFAULT_PROMPT_SET}])
    if not isinstance(entries, list) or not entries:
        raise VariantsFileError(file, reason="prompt_sets must be a non-empty list", hint=_HINT)
    sets: dict[str, tuple[Path | None, Path | None]] = {}
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
        paths: list[Path | None] = []
        for role in ("positive", "negative"):
            value = entry.get(role)
            if value is None:
                paths.append(None)
                continue
            path = Path(value) if Path(value).is_absolute() else base / value
            if not path.is_file():
                raise VariantsFileError(
                    file, reason=f"{where}: {role} file {value!r} not found", hint="paths are relative to the file"
                )
            paths.append(path)
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


# --------------------------------------------------------------------------- publishing


def _failure(err: BaseException) -> str:
    from bakesteer.hub import HubError

    if isinstance(err, HubError):  # publish discards the converted output after a failed push
        return err.without_note()
    if isinstance(err, BakesteerError):
        return err.one_line()
    message = str(err).splitlines()[0] if str(err) else ""
    return f"unexpected {type(err).__name__}: {message}"


def _planned_fingerprint(variant: Variant, source: dict[str, Any], prompt_sha: dict[str, str]) -> str:
    return fingerprint_of(source, __version__, variant.options.to_dict(), prompt_sha)


def publish(
    variants_file: Path,
    *,
    dry_run: bool = False,
    work_dir: Path | None = None,
    keep_outputs: Path | None = None,
    token: str | None = None,
    on_outcome: Callable[[VariantOutcome], None] | None = None,
) -> PublishReport:
    """Publish every variant of ``variants_file`` that is not already on the Hub with the same fingerprint.

    Args:
        variants_file: A TOML or YAML file (see the module docstring).
        dry_run: Resolve sources and read the targets, then report what would be published; convert nothing.
        work_dir: Where outputs are converted before their push (default: the system's temporary directory).
        keep_outputs: Keep each converted output in this directory (named after its target) instead of deleting
            it after the push.
        token: Defaults to ``HF_TOKEN`` or the stored login.
        on_outcome: Called with each variant's outcome as soon as it is known (the CLI prints it).

    Returns:
        A :class:`PublishReport`; a failed variant does not stop the others.

    Raises:
        VariantsFileError: the file is invalid (nothing is done).
        HubError: ``HF_HUB_OFFLINE`` is set, or the token is missing or invalid (checked once, before anything is
            converted).
    """
    from bakesteer.hub import check_online, check_token, published_state
    from bakesteer.pipeline import compute_vector
    from bakesteer.prompts import load_prompt_set
    from bakesteer.source import source_identity

    variants = load_variants(Path(variants_file))
    report = PublishReport(dry_run=dry_run)
    check_online()  # even a dry run reads every target
    if not dry_run:
        check_token(token=token)

    def record(outcome: VariantOutcome) -> None:
        report.outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)

    # 1. identities and fingerprints: one metadata call or hash per source, one read of each target
    sources: dict[tuple[str, str | None], dict[str, Any] | BaseException] = {}
    prompt_sha: dict[tuple[Path | None, ...], dict[str, str] | BaseException] = {}
    pending: list[tuple[Variant, str, dict[str, Any], str]] = []
    for variant in variants:
        started = time.perf_counter()
        key = (variant.model, variant.options.revision)
        if key not in sources:
            try:
                sources[key] = source_identity(variant.model, revision=variant.options.revision)
            except Exception as err:  # recorded for each of its variants; the other models still publish
                sources[key] = err
        pkey = (variant.options.positive, variant.options.negative, variant.options.eval_prompts)
        if pkey not in prompt_sha:
            try:
                prompt_sha[pkey] = {
                    role: load_prompt_set(p, role).sha256
                    for role, p in zip(("positive", "negative", "eval"), pkey, strict=True)
                }
            except Exception as err:
                prompt_sha[pkey] = err
        source, hashes = sources[key], prompt_sha[pkey]
        if isinstance(source, BaseException):
            record(VariantOutcome(variant, "failed", "resolving the source", error=_failure(source)))
            continue
        if isinstance(hashes, BaseException):
            record(VariantOutcome(variant, "failed", "reading the prompt sets", error=_failure(hashes)))
            continue
        planned = _planned_fingerprint(variant, source, hashes)
        try:
            state = published_state(variant.repo_id, variant.branch, token=token)
        except Exception as err:
            record(VariantOutcome(variant, "failed", "reading the target", planned, source, error=_failure(err)))
            continue
        if state.fingerprint == planned:
            seconds = time.perf_counter() - started
            record(
                VariantOutcome(variant, "up-to-date", "same fingerprint", planned, source, state.head, seconds=seconds)
            )
            continue
        reason = "fingerprint changed" if state.fingerprint else state.reason
        if dry_run:
            record(VariantOutcome(variant, "would-publish", reason, planned, source))
            continue
        pending.append((variant, reason, source, planned))

    # 2. one calibration per model and prompt set, then convert + push each pending variant
    groups: dict[int, list[tuple[Variant, str, dict[str, Any], str]]] = {}
    for item in pending:
        groups.setdefault(item[0].group, []).append(item)
    scratch_root = Path(work_dir) if work_dir is not None else None
    if scratch_root is not None:
        scratch_root.mkdir(parents=True, exist_ok=True)
    for items in groups.values():
        first, _, source, _ = items[0]
        # the exact commit that was fingerprinted, even if the branch moves while this runs
        revision = source["revision"] if source["kind"] == "hub" else None
        with tempfile.TemporaryDirectory(prefix="bakesteer-publish-", dir=scratch_root) as scratch:
            vector_path = Path(scratch) / "steering.safetensors"
            started = time.perf_counter()
            try:
                compute_vector(first.model, vector_path, first.options.replace(revision=revision))
                report.calibrations += 1
            except Exception as err:
                logger.debug("calibration of %s failed", first.model, exc_info=True)
                for variant, reason, src, planned in items:
                    outcome = VariantOutcome(variant, "failed", reason, planned, src, error=_failure(err))
                    outcome.seconds = time.perf_counter() - started
                    record(outcome)
                continue
            for variant, reason, src, planned in items:
                outcome = VariantOutcome(variant, "failed", reason, planned, src)
                output = (Path(keep_outputs) if keep_outputs is not None else Path(scratch)) / variant.output_name
                _convert_and_push(outcome, vector_path, revision, output, token)
                if keep_outputs is None:
                    shutil.rmtree(output, ignore_errors=True)  # disk for the next variant
                record(outcome)
    # keep the file's order in the report
    order = {id(v): i for i, v in enumerate(variants)}
    report.outcomes.sort(key=lambda o: order[id(o.variant)])
    return report


def _convert_and_push(
    outcome: VariantOutcome, vector_path: Path, revision: str | None, output: Path, token: str | None
) -> None:
    """Convert one variant with the shared vector, then push it; fills in ``outcome`` (failed on any error)."""
    from bakesteer.hub import push
    from bakesteer.pipeline import convert

    variant = outcome.variant
    started = time.perf_counter()
    try:
        result = convert(variant.model, output, variant.options.replace(vector=vector_path, revision=revision))
        outcome.validation = {
            "passed": result.validation.passed,
            "relative_diff": result.validation.relative_diff,
            "dtype": result.validation.dtype,
        }
        if result.metadata["fingerprint"] != outcome.fingerprint:  # both come from the same record: a bug
            logger.warning("%s: fingerprint differs from the planned one", variant.target)
            outcome.fingerprint = result.metadata["fingerprint"]
        pushed = push(
            result.output,
            variant.repo_id,
            private=variant.options.private,
            revision=variant.branch,
            commit_message=variant.options.commit_message,
            token=token,
        )
        outcome.commit = pushed.commit
        outcome.status = "published" if pushed.commit else "unchanged"
    except Exception as err:
        logger.debug("%s failed", variant.target, exc_info=True)
        outcome.error = _failure(err)
    outcome.seconds = time.perf_counter() - started
