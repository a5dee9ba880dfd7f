"""Typed errors that carry data.

Every error bakesteer raises on bad input subclasses :class:`BakesteerError` (and a matching built-in, so callers
that catch ``ValueError`` or ``FileNotFoundError`` keep working). Each one knows the problem (``str(err)``) and the
way forward (``err.hint``); the CLI turns them into a single line in one place (``bakesteer.cli``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: Attribute a stage sets on a ``KeyboardInterrupt`` (Ctrl-C, or SIGTERM through the CLI) passing through it, saying
#: what the interrupted run leaves (the CLI's line says it instead of "nothing was written").
INTERRUPTED_STATE = "bakesteer_state"


def interrupted_state(err: BaseException, state: str) -> None:
    """Record on an interrupt what the run leaves behind (the first, innermost stage to say so wins)."""
    if not getattr(err, INTERRUPTED_STATE, None):
        setattr(err, INTERRUPTED_STATE, state)


class BakesteerError(Exception):
    """Base class for every error bakesteer raises on purpose.

    Attributes:
        hint: One sentence saying how to fix the problem.
        exit_code: The exit status the CLI uses for this error.
    """

    exit_code: int = 2

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint

    def one_line(self) -> str:
        """The message and the hint as a single line, as the CLI prints it."""
        text = str(self).replace("\n", " ")
        return f"{text}; {self.hint}" if self.hint else text


class ModelNotFoundError(BakesteerError, FileNotFoundError):
    """The model is neither a local directory, a ``.gguf`` file nor a reachable Hub repository."""

    def __init__(self, model: str, *, reason: str = "", hint: str = "") -> None:
        self.model = model
        self.reason = reason
        message = f"model not found: {model!r}" + (f" ({reason})" if reason else "")
        super().__init__(
            message,
            hint=hint
            or "pass a local directory with config.json, a .gguf file, or a Hub id you can reach "
            "(unset HF_HUB_OFFLINE to download, or log in with `hf auth login` for gated repos)",
        )


class UnsupportedCheckpointError(BakesteerError, ValueError):
    """The checkpoint exists but bakesteer will not read it (pickle-only, quantized, no weights...)."""

    def __init__(self, model: str, *, reason: str, hint: str) -> None:
        self.model = model
        self.reason = reason
        super().__init__(f"cannot read {model!r}: {reason}", hint=hint)


class UnsupportedArchitectureError(BakesteerError, ValueError):
    """No registry entry bakes this ``model_type`` exactly."""

    def __init__(self, model_type: str, supported: Sequence[str], *, reason: str = "", hint: str = "") -> None:
        self.model_type = model_type
        self.supported = sorted(supported)
        self.reason = reason
        why = f": {reason}" if reason else ""
        super().__init__(
            f"unsupported architecture {model_type!r}{why} (supported: {', '.join(self.supported)})",
            hint=hint
            or "steer it with hooks at run time, or add a registry entry (bakesteer/architectures/registry.py) "
            "with a tiny fixture (tests/fixtures.py)",
        )


class OptionError(BakesteerError, ValueError):
    """An option value is invalid (alpha, layers, batch size, dtype, ...)."""

    def __init__(self, option: str, value: Any, *, reason: str, hint: str) -> None:
        self.option = option
        self.value = value
        self.reason = reason
        super().__init__(f"invalid {option} {value!r}: {reason}", hint=hint)


class PromptSetError(BakesteerError, ValueError):
    """A prompt file is missing, unreadable, in an unknown format or too small."""

    def __init__(self, path: str | Path, *, reason: str, hint: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"prompt set {self.path}: {reason}", hint=hint)


class VectorFileError(BakesteerError, ValueError):
    """A ``--vector`` file is missing, malformed or made for another model."""

    def __init__(self, path: str | Path, *, reason: str, hint: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"vector file {self.path}: {reason}", hint=hint)


class PromptContentError(BakesteerError, ValueError):
    """The prompt sets read fine but cannot serve: no token to count, or sets the model cannot tell apart.

    Attributes:
        reason: What the prompts lack.
    """

    def __init__(self, reason: str, *, hint: str) -> None:
        self.reason = reason
        super().__init__(f"the prompt sets cannot be used: {reason}", hint=hint)


class DirectionError(BakesteerError, ArithmeticError):
    """The difference of means at a layer is zero or not finite, so it has no direction."""

    def __init__(self, layer: int, norm: float) -> None:
        self.layer = layer
        self.norm = norm
        super().__init__(
            f"the steering direction at layer {layer} is degenerate (|pos - neg| = {norm:g})",
            hint="use positive and negative prompt sets that differ, or a dtype with more precision (--dtype float32)",
        )


class OutputExistsError(BakesteerError, FileExistsError):
    """The output exists: a file, or a directory that is not empty."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        what = "a file" if Path(path).is_file() else "a directory that is not empty"
        super().__init__(
            f"output {self.path} already exists ({what})",
            hint="choose another --output, or pass --overwrite to replace it",
        )


class OutputIsSourceError(BakesteerError, ValueError):
    """The output would replace, contain or sit inside the source model (``--overwrite`` would destroy it).

    Attributes:
        path: The output directory.
        source: The source model's path.
        relation: ``is``, ``contains`` or ``lies inside``.
    """

    def __init__(self, path: str | Path, source: str | Path, relation: str) -> None:
        self.path, self.source, self.relation = str(path), str(source), relation
        what = {"is": "is the source model", "contains": "contains the source model"}.get(
            relation, "lies inside the source model's directory"
        )
        super().__init__(
            f"output directory {self.path} {what} ({self.source})",
            hint="choose an --output outside the model; bakesteer never writes into or over its source",
        )


def human_bytes(count: float) -> str:
    """``1.5 GiB``-style size."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"


class OutputLocationError(BakesteerError, PermissionError):
    """The output cannot be created where it was asked for (a read-only filesystem or directory, a file in the way).

    Attributes:
        path: The output.
        blocker: The existing path that prevents it.
        reason: What is wrong with ``blocker``.
    """

    def __init__(self, path: str | Path, blocker: str | Path, reason: str) -> None:
        self.path, self.blocker, self.reason = str(path), str(blocker), reason
        super().__init__(
            f"cannot write {self.path}: {self.blocker} {reason}",
            hint="choose an --output in a directory you can write",
        )


class DiskSpaceError(BakesteerError, OSError):
    """Not enough free space where the output is written (found before calibrating, or on ENOSPC while writing).

    Attributes:
        directory: The directory the output, its staging copy and scratch files are written in.
        needed: Bytes this conversion writes there (an estimate).
        free: Bytes free there.
    """

    def __init__(self, directory: str | Path, *, needed: int, free: int) -> None:
        self.directory, self.needed, self.free = str(directory), int(needed), int(free)
        super().__init__(
            f"not enough space in {self.directory}: this conversion writes about {human_bytes(self.needed)} there "
            f"(weights, spilled reference logits and scratch files) and {human_bytes(self.free)} is free",
            hint="free some space, or pass an --output on a larger filesystem (nothing was left behind)",
        )


class ValidationError(BakesteerError, RuntimeError):
    """The baked checkpoint, reloaded from disk, does not reproduce the hooked model.

    Attributes:
        check: Which check failed (``keys``, ``logits``, ``greedy``, ``no-op``, ``config``, ``readers``, ``bias``,
            ``tokenizer``).
        detail: What the check found, in words.
        measured: The number the check compared (a relative logit difference, a greedy step, a count), if any.
        bound: What it was compared with (the tolerance), if any.
        report: The validation report as a dict (every number measured so far).
    """

    exit_code = 3

    def __init__(
        self,
        check: str,
        detail: str,
        *,
        measured: float | None = None,
        bound: float | None = None,
        report: dict[str, Any] | None = None,
    ) -> None:
        self.check = check
        self.detail = detail
        self.measured = measured
        self.bound = bound
        self.report = report or {}
        super().__init__(
            f"validation failed ({check}): {detail}; nothing was written",
            hint="rerun with --debug to see every number the check measured, and report them with the command",
        )


class NotAnOutputError(BakesteerError, FileNotFoundError):
    """A directory (or Hub repository) that a command needs to be a bakesteer output is not one.

    Attributes:
        where: The directory name, or ``repo@revision``.
        reason: What is missing or unreadable.
    """

    def __init__(self, where: str, *, reason: str) -> None:
        self.where = where
        self.reason = reason
        super().__init__(
            f"{where} is not a bakesteer output ({reason})",
            hint="pass a directory written by `bakesteer convert` (bakesteer.json and steering.safetensors inside)",
        )


class VariantsFileError(BakesteerError, ValueError):
    """A ``publish`` variants file is missing, malformed, or names an invalid option, repo or prompt set."""

    def __init__(self, path: str | Path, *, reason: str, hint: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"variants file {self.path}: {reason}", hint=hint)


class EvaluationError(BakesteerError, ValueError):
    """A model cannot be measured as asked: not a bakesteer output, no base model known, prompt sets that differ
    from the calibration's, or an ``--alpha auto`` grid in which no k stays within the limits."""

    def __init__(self, subject: str, *, reason: str, hint: str) -> None:
        self.subject = subject
        self.reason = reason
        super().__init__(f"{subject}: {reason}", hint=hint)


class JudgeError(BakesteerError, ValueError):
    """A judge cannot serve: a server that cannot be reached, refuses the key or does not serve the model; a rubric
    template that cannot be used; or a judge that answered no request.

    Attributes:
        subject: The server (scheme, host and port only), model or rubric.
        reason: What is wrong.
    """

    def __init__(self, subject: str, *, reason: str, hint: str) -> None:
        self.subject = subject
        self.reason = reason
        super().__init__(f"judge {subject}: {reason}", hint=hint)


class DegenerateError(BakesteerError, RuntimeError):
    """A variant that the degeneration gate flagged is not published (unless ``--allow-degenerate``).

    Attributes:
        subject: The output or variant.
        rate: The share of long answers that degenerated.
        reasons: How many answers failed for each reason.
    """

    exit_code = 3

    def __init__(self, subject: str, *, rate: float, reasons: dict[str, int]) -> None:
        self.subject = subject
        self.rate = rate
        self.reasons = reasons
        found = ", ".join(f"{k} {v}" for k, v in reasons.items() if v) or "none"
        super().__init__(
            f"{subject} degenerates: {rate:.0%} of its long answers fail ({found}); nothing was pushed",
            hint="choose a smaller |k| (see `bakesteer sweep`), or pass --allow-degenerate to publish it anyway",
        )


class ExportError(BakesteerError, ValueError):
    """A bake cannot be exported as asked: not a bakesteer output, a block the format cannot address, a family the
    runtime does not run, or no converter at hand."""

    def __init__(self, subject: str, *, reason: str, hint: str) -> None:
        self.subject = subject
        self.reason = reason
        super().__init__(f"cannot export {subject}: {reason}", hint=hint)


class HubError(BakesteerError, ConnectionError):
    """The Hub refused or failed a request. Nothing local was changed.

    Attributes:
        repo_id: The repository (or "the Hub" for a token check).
        status: The HTTP status, or ``None`` for a network failure.
        action: What was being done ("push to", "read", "token check at").
        reason: The failure, in words.
    """

    def __init__(self, repo_id: str, status: int | None, reason: str, hint: str, *, action: str = "push to") -> None:
        self.repo_id = repo_id
        self.status = status
        self.action = action
        self.reason = reason
        note = "; the local output is unchanged" if action == "push to" else ""
        super().__init__(f"{action} {repo_id} failed: {reason}{note}", hint=hint)

    def without_note(self) -> str:
        """The one-line message without the remark about the local output (for callers that discard it)."""
        return f"{self.action} {self.repo_id} failed: {self.reason}; {self.hint}"


class NotPushableError(BakesteerError, ValueError):
    """The directory is not a validated bakesteer output."""
