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

import logging
import shutil
import tempfile
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bakesteer.errors import BakesteerError, HubError
from bakesteer.fingerprint import fingerprint_of
from bakesteer.record import VECTOR_FILE, Record, write_json
from bakesteer.variants import Variant, load_variants
from bakesteer.version import __version__

__all__ = ["PublishReport", "Variant", "VariantOutcome", "load_variants", "plan_matrix", "publish"]

logger = logging.getLogger(__name__)

Status = typing.Literal["published", "unchanged", "up-to-date", "would-publish", "failed"]


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
    #: Refused by the degeneration gate (the failure ``publish`` exits 3 for).
    degenerate: bool = False

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
        write_json(path, self.to_dict(), sort_keys=False)


# --------------------------------------------------------------------------- publishing


def _failure(err: BaseException) -> str:
    if isinstance(err, HubError):  # publish discards the converted output after a failed push
        return err.without_note()
    if isinstance(err, BakesteerError):
        return err.one_line()
    message = str(err).splitlines()[0] if str(err) else ""
    return f"unexpected {type(err).__name__}: {message}"


def _raise_if_unreachable(err: BaseException) -> None:
    """A network failure concerns every variant alike: stop with one line before anything is converted, rather than
    failing each variant in turn."""
    if isinstance(err, HubError) and err.status is None:
        raise err


def _only_group(variants: list[Variant], group: str, file: str) -> list[Variant]:
    from bakesteer.errors import VariantsFileError

    selected = [v for v in variants if v.group_id == group]
    if not selected:
        known = ", ".join(dict.fromkeys(v.group_id for v in variants))
        raise VariantsFileError(file, reason=f"no calibration group {group!r}", hint=f"groups: {known}")
    return selected


def plan_matrix(report: PublishReport) -> dict[str, Any]:
    """A GitHub Actions matrix with one entry per calibration group that has something to publish.

    Args:
        report: A dry run's report.

    Returns:
        ``{"include": [{"id", "model", "prompt_set", "source", "cache_key", "targets"}, ...]}`` in file order:
        ``id`` selects the group (``publish --group``), ``source`` is the fingerprinted model and revision, and
        ``cache_key`` a short hash of it for a per-job model cache.
    """
    import hashlib

    entries: dict[str, dict[str, Any]] = {}
    for outcome in report.outcomes:
        if outcome.status != "would-publish":
            continue
        v, source = outcome.variant, outcome.source or {}
        entry = entries.get(v.group_id)
        if entry is None:
            revision = f"{source.get('model_id')}@{source.get('revision')}"
            entry = entries[v.group_id] = {
                "id": v.group_id,
                "model": v.label,
                "prompt_set": v.prompt_set,
                "source": revision,
                "cache_key": hashlib.sha256(revision.encode()).hexdigest()[:16],
                "targets": [],
            }
        entry["targets"].append(v.target)
    return {"include": list(entries.values())}


def _planned_fingerprint(variant: Variant, source: dict[str, Any], prompt_sha: dict[str, str | None]) -> str:
    return fingerprint_of(source, __version__, variant.options.to_dict(), prompt_sha)


def publish(
    variants_file: Path,
    *,
    dry_run: bool = False,
    work_dir: Path | None = None,
    keep_outputs: Path | None = None,
    token: str | None = None,
    on_outcome: Callable[[VariantOutcome], None] | None = None,
    group: str | None = None,
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
        group: Only the variants of this calibration group (a :attr:`Variant.group_id`, as :func:`plan_matrix`
            lists them): one CI job per group.

    Returns:
        A :class:`PublishReport`; a failed variant does not stop the others.

    Raises:
        VariantsFileError: the file is invalid, or has no group ``group`` (nothing is done).
        HubError: ``HF_HUB_OFFLINE`` is set, or the token is missing or invalid (checked once, before anything is
            converted).
    """
    from bakesteer.hub import check_online, check_token

    variants = load_variants(Path(variants_file))
    if group is not None:
        variants = _only_group(variants, group, Path(variants_file).name)
    report = PublishReport(dry_run=dry_run)
    check_online()  # even a dry run reads every target
    if not dry_run:
        check_token(token=token)

    def record(outcome: VariantOutcome) -> None:
        report.outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)

    pending = plan_variants(variants, token=token, record=record, dry_run=dry_run)
    if pending:
        report.calibrations = _execute(pending, work_dir, keep_outputs, token, record)
    # keep the file's order in the report
    order = {id(v): i for i, v in enumerate(variants)}
    report.outcomes.sort(key=lambda o: order[id(o.variant)])
    return report


def _failed(outcome: VariantOutcome, err: BaseException, started: float) -> VariantOutcome:
    """The one place a variant is marked failed: its status, the error's one line and the seconds it took."""
    from bakesteer.errors import DegenerateError

    outcome.status, outcome.error = "failed", _failure(err)
    outcome.degenerate = isinstance(err, DegenerateError)
    outcome.seconds = time.perf_counter() - started
    return outcome


def plan_variants(
    variants: list[Variant],
    *,
    token: str | None,
    record: Callable[[VariantOutcome], None],
    dry_run: bool = False,
) -> list[VariantOutcome]:
    """Plan: resolve each source and prompt set once, fingerprint each variant, read each target.

    Variants that are up to date or failed (and, in a dry run, those that would publish) are handed to ``record``.

    Returns:
        The variants to convert and push ("would-publish"), in file order (none in a dry run).

    Raises:
        HubError: the network failed (it concerns every variant alike, so nothing is converted).
    """
    from bakesteer.hub import published_state
    from bakesteer.prompts import prompt_hashes
    from bakesteer.source import source_identity

    sources: dict[tuple[str, str | None], dict[str, Any] | BaseException] = {}
    prompt_sha: dict[tuple[Path | str | None, ...], dict[str, str | None] | BaseException] = {}
    pending: list[VariantOutcome] = []
    for variant in variants:
        started = time.perf_counter()
        key = (variant.model, variant.options.revision)
        if key not in sources:
            try:
                sources[key] = source_identity(variant.model, revision=variant.options.revision)
            except Exception as err:  # recorded for each of its variants; the other models still publish
                _raise_if_unreachable(err)
                sources[key] = err
        pkey = (variant.options.positive, variant.options.negative, variant.options.eval_prompts)
        if pkey not in prompt_sha:
            try:
                prompt_sha[pkey] = prompt_hashes(variant.options)
            except Exception as err:
                prompt_sha[pkey] = err
        source, hashes = sources[key], prompt_sha[pkey]
        if isinstance(source, BaseException):
            record(_failed(VariantOutcome(variant, "failed", "resolving the source"), source, started))
            continue
        if isinstance(hashes, BaseException):
            record(_failed(VariantOutcome(variant, "failed", "reading the prompt sets"), hashes, started))
            continue
        planned = _planned_fingerprint(variant, source, hashes)
        outcome = VariantOutcome(variant, "would-publish", "", planned, source)
        try:
            state = published_state(variant.repo_id, variant.branch, token=token)
        except Exception as err:
            _raise_if_unreachable(err)
            outcome.reason = "reading the target"
            record(_failed(outcome, err, started))
            continue
        if state.fingerprint == planned:
            outcome.status, outcome.reason, outcome.commit = "up-to-date", "same fingerprint", state.head
            outcome.seconds = time.perf_counter() - started
            record(outcome)
            continue
        outcome.reason = "fingerprint changed" if state.fingerprint else state.reason
        if dry_run:
            record(outcome)
        else:
            pending.append(outcome)
    return pending


def _execute(
    pending: list[VariantOutcome],
    work_dir: Path | None,
    keep_outputs: Path | None,
    token: str | None,
    record: Callable[[VariantOutcome], None],
) -> int:
    """Execute: one calibration per model and prompt set, then convert and push each of its variants.

    Returns:
        The number of calibrations run.
    """
    from bakesteer.pipeline import compute_vector

    groups: dict[int, list[VariantOutcome]] = {}
    for outcome in pending:
        groups.setdefault(outcome.variant.group, []).append(outcome)
    scratch_root = Path(work_dir) if work_dir is not None else None
    if scratch_root is not None:
        scratch_root.mkdir(parents=True, exist_ok=True)
    calibrations = 0
    for items in groups.values():
        first, source = items[0].variant, items[0].source or {}
        # the exact commit that was fingerprinted, even if the branch moves while this runs
        revision = source["revision"] if source.get("kind") == "hub" else None
        with tempfile.TemporaryDirectory(prefix="bakesteer-publish-", dir=scratch_root) as scratch:
            vector_path = Path(scratch) / VECTOR_FILE
            started = time.perf_counter()
            try:
                compute_vector(first.model, vector_path, first.options.replace(revision=revision))
                calibrations += 1
            except Exception as err:
                logger.debug("calibration of %s failed", first.model, exc_info=True)
                for outcome in items:
                    record(_failed(outcome, err, started))
                continue
            for outcome in items:
                name = outcome.variant.output_name
                output = (Path(keep_outputs) if keep_outputs is not None else Path(scratch)) / name
                _convert_and_push(outcome, vector_path, revision, output, token)
                if keep_outputs is None:
                    shutil.rmtree(output, ignore_errors=True)  # disk for the next variant
                record(outcome)
    return calibrations


def _convert_and_push(
    outcome: VariantOutcome, vector_path: Path, revision: str | None, output: Path, token: str | None
) -> None:
    """Convert one variant with the shared vector, then push it; fills in ``outcome`` (published or unchanged, or
    failed on any error)."""
    from bakesteer.hub import push
    from bakesteer.pipeline import check_degenerate, convert

    variant = outcome.variant
    started = time.perf_counter()
    try:
        result = convert(variant.model, output, variant.options.replace(vector=vector_path, revision=revision))
        assert result.validation is not None  # publish pushes itself: convert never skips as up to date here
        outcome.validation = {
            "passed": result.validation.passed,
            "relative_diff": result.validation.relative_diff,
            "dtype": result.validation.dtype,
        }
        fingerprint = Record(result.metadata).fingerprint
        if fingerprint != outcome.fingerprint:  # both come from the same record: a bug
            logger.warning("%s: fingerprint differs from the planned one", variant.target)
            outcome.fingerprint = fingerprint
        check_degenerate(result.metadata, variant.options, variant.target)
        pushed = push(
            result.output,
            variant.repo_id,
            private=variant.options.private,
            branch=variant.branch,
            commit_message=variant.options.commit_message,
            token=token,
        )
        outcome.commit = pushed.commit
        outcome.status = "published" if pushed.commit else "unchanged"
    except Exception as err:
        logger.debug("%s failed", variant.target, exc_info=True)
        _failed(outcome, err, started)
        return
    outcome.seconds = time.perf_counter() - started
