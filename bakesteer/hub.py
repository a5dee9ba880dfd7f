"""Publishing a validated output directory to the Hub: one commit per push, unchanged files skipped, and only files
that an earlier bakesteer output listed (``files`` in its ``bakesteer.json``) and this one lacks deleted: whatever
else the repository holds is kept. The token comes from ``HF_TOKEN`` or the huggingface_hub login and is
never printed, logged or written."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bakesteer.card import REPO_PLACEHOLDER
from bakesteer.errors import HubError, NotAnOutputError, NotPushableError
from bakesteer.hubnet import ensure_timeout, network_cause, network_error, status_of
from bakesteer.record import CARD_FILE, RECORD_FILE, Record, read_output
from bakesteer.source import sha256_file

logger = logging.getLogger(__name__)


@dataclass
class PushResult:
    """What a push did. ``commit`` is ``None`` when nothing changed (no commit was made)."""

    repo_id: str
    branch: str
    commit: str | None
    uploaded: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _same(local: Path | bytes, remote: Any) -> bool:
    lfs = getattr(remote, "lfs", None)
    if lfs is not None:
        if isinstance(local, bytes):
            return bool(lfs.size == len(local) and lfs.sha256 == hashlib.sha256(local).hexdigest())
        return bool(lfs.size == local.stat().st_size and lfs.sha256 == sha256_file(local))
    data = local if isinstance(local, bytes) else local.read_bytes()
    return bool(getattr(remote, "blob_id", None) == _git_oid(data))


def _for_repo(name: str, path: Path, repo_id: str) -> Path | bytes:
    """What is uploaded for a local file: the card gets its usage snippet pointed at ``repo_id``; the rest as is."""
    if name != CARD_FILE:
        return path
    text = path.read_bytes().replace(f'"{REPO_PLACEHOLDER}"'.encode(), f'"{repo_id}"'.encode())
    return text.replace(f"bakesteer verify {REPO_PLACEHOLDER}".encode(), f"bakesteer verify {repo_id}".encode())


_STATUS = {
    401: ("authentication failed (missing or invalid token)", "set HF_TOKEN or run `hf auth login` with a write token"),
    403: ("the token may not write to this repository", "use a token with write access to it, or another OWNER/NAME"),
    404: ("repository or branch not found", "check OWNER/NAME and --revision"),
    409: ("conflict with the repository's state", "rerun; if it persists, check the repository on the Hub"),
    412: ("the branch moved during the push", "rerun the push"),
}


def hub_error_of(repo_id: str, err: BaseException, action: str = "push to") -> HubError | None:
    """The :class:`HubError` for a failed Hub call, or ``None`` if ``err`` is not one.

    The client wraps a failed LFS upload in a ``RuntimeError`` ("Error while uploading ..."), so the cause chain is
    searched for the HTTP or transport error underneath.
    """
    from huggingface_hub.errors import OfflineModeIsEnabled

    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, OfflineModeIsEnabled):
            return HubError(
                repo_id, None, "HF_HUB_OFFLINE is set", "unset HF_HUB_OFFLINE to reach the Hub", action=action
            )
        status = status_of(cause)  # HfHubHTTPError, httpx.HTTPStatusError
        if status is not None:
            reason, hint = _STATUS.get(status, (f"the Hub answered {status}", "rerun later; check the Hub's status"))
            return HubError(repo_id, status, reason, hint, action=action)
        cause = cause.__cause__
    network = network_cause(err)
    if network is not None:
        return network_error(repo_id, network, action=action)
    return None


def push(
    directory: Path,
    repo_id: str,
    *,
    private: bool = False,
    branch: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
    force: bool = False,
) -> PushResult:
    """Publish a bakesteer output directory to ``repo_id`` in a single commit.

    Args:
        directory: An output of ``bakesteer convert``.
        repo_id: ``OWNER/NAME``; created if missing.
        private: Create the repository private.
        branch: The branch to push to (created from main if missing); default ``main``.
        commit_message: Defaults to a summary of k and the band.
        token: Defaults to ``HF_TOKEN`` or the stored login.
        force: Push even if the output did not pass validation, or into a branch that holds files but no bakesteer
            output (they are kept).

    Raises:
        NotAnOutputError: not a bakesteer output.
        NotPushableError: not validated, or a branch of foreign files (without ``force``).
        HubError: the Hub refused (401, 403, 404, 409, 412, ...) or the network failed.
    """
    from huggingface_hub import HfApi

    ensure_timeout()
    directory = Path(directory)
    record = read_output(directory, vector=False).record
    if not record.passed and not force:
        raise NotPushableError(
            f"{directory.name} did not pass validation", hint="reconvert it, or pass --force to push it anyway"
        )
    branch = branch or "main"
    start, end = record.band
    message = commit_message or f"bakesteer {record.version}: k={record.k:g}, layers {start}-{end - 1}"
    local = {p.name: p for p in sorted(directory.iterdir()) if p.is_file()}
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if branch != "main":
            api.create_branch(repo_id, branch=branch, exist_ok=True)
        # the tree is read at a known head, and the commit names that head as its parent: if another writer moves
        # the branch in between, the Hub answers 412 instead of this push deleting or keeping the wrong files
        head = api.repo_info(repo_id, revision=branch).sha
        result, operations = _plan_push(api, repo_id, branch, head, local, force=force)
        if not operations:
            logger.info("%s@%s is up to date: no commit", repo_id, branch)
            return result
        info = api.create_commit(repo_id, operations, commit_message=message, revision=branch, parent_commit=head)
        result.commit = info.oid
        return result
    except NotPushableError:
        raise
    except Exception as err:
        hub_error = hub_error_of(repo_id, err)
        if hub_error is None:
            raise
        logger.debug("push failed: %r", err, exc_info=True)
        raise hub_error from None


def _plan_push(
    api: Any, repo_id: str, branch: str, head: str | None, local: dict[str, Path], *, force: bool
) -> tuple[PushResult, list[Any]]:
    """The commit's operations: each local file that differs from the branch's copy is added, and each file an
    earlier bakesteer output listed that this one lacks is deleted.

    Raises:
        NotPushableError: the branch holds files bakesteer did not write and no bakesteer output (without ``force``).
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete
    from huggingface_hub.hf_api import RepoFile

    remote = {f.path: f for f in api.list_repo_tree(repo_id, revision=head, recursive=True) if isinstance(f, RepoFile)}
    ours = _written_by_bakesteer(api, repo_id, head, remote)
    foreign = sorted(p for p in remote if p != ".gitattributes" and p not in (ours or set()))
    if ours is None and foreign and not force:
        raise NotPushableError(
            f"{repo_id}@{branch} holds files bakesteer did not write (e.g. {foreign[0]}) and no {RECORD_FILE}",
            hint="push to a new repository or --revision branch, or pass --force to add the output beside them "
            "(nothing of theirs is deleted)",
        )
    result = PushResult(repo_id, branch, None)
    operations: list[Any] = []
    for name, path in local.items():
        content = _for_repo(name, path, repo_id)
        if name in remote and _same(content, remote[name]):
            result.unchanged.append(name)
        else:
            source = content if isinstance(content, bytes) else str(content)
            operations.append(CommitOperationAdd(path_in_repo=name, path_or_fileobj=source))
            result.uploaded.append(name)
    # only files an earlier bakesteer push wrote (its bakesteer.json lists them) and this output lacks
    result.deleted = sorted(p for p in remote if p not in local and p in (ours or set()))
    operations += [CommitOperationDelete(path_in_repo=p) for p in result.deleted]
    return result, operations


def _remote_record(api: Any, repo_id: str, revision: str | None) -> Record | None:
    """The ``bakesteer.json`` at ``repo_id@revision``, or ``None`` when it is not a readable record."""
    path = api.hf_hub_download(repo_id, RECORD_FILE, revision=revision)
    try:
        return Record.from_json(Path(path).read_text(encoding="utf-8"), where=f"{repo_id}@{revision}")
    except (OSError, UnicodeDecodeError, NotAnOutputError):
        return None


def _written_by_bakesteer(api: Any, repo_id: str, head: str | None, remote: dict[str, Any]) -> set[str] | None:
    """The files the output at ``head`` consists of, from its ``bakesteer.json`` (``files``); ``None`` when the
    branch holds no bakesteer output. An output written before the record existed claims no file (nothing is
    deleted for it)."""
    if RECORD_FILE not in remote:
        return None
    record = _remote_record(api, repo_id, head)
    return set() if record is None else record.files or set()


@dataclass(frozen=True)
class PublishedState:
    """What a repository branch holds now, as far as publishing is concerned.

    Attributes:
        fingerprint: The fingerprint in its ``bakesteer.json`` if that output passed validation, else ``None``.
        reason: Why a publish is or is not needed ("new repository", "new branch", "fingerprint changed", ...).
        head: The branch's commit, when it exists.
    """

    fingerprint: str | None
    reason: str
    head: str | None = None


def published_state(repo_id: str, branch: str | None = None, *, token: str | None = None) -> PublishedState:
    """Read ``bakesteer.json`` at ``repo_id@branch`` (default main) without downloading anything else.

    Raises:
        HubError: the Hub refused (401, 403, ...) or the network failed.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    ensure_timeout()
    api = HfApi(token=token)
    try:
        try:
            info = api.model_info(repo_id, revision=branch or "main")
        except RevisionNotFoundError:
            return PublishedState(None, "new branch")
        except RepositoryNotFoundError:
            return PublishedState(None, "new repository")
        names = {sibling.rfilename for sibling in info.siblings or []}
        if RECORD_FILE not in names:
            return PublishedState(None, f"no {RECORD_FILE} in the repository", info.sha)
        record = _remote_record(api, repo_id, info.sha)
    except Exception as err:
        hub_error = hub_error_of(repo_id, err, action="read")
        if hub_error is None:
            raise
        raise hub_error from None
    if record is None:
        return PublishedState(None, f"unreadable {RECORD_FILE}", info.sha)
    if not record.passed:
        return PublishedState(None, "the published output did not pass validation", info.sha)
    return PublishedState(record.fingerprint, "published", info.sha)


def check_online() -> None:
    """Raises :class:`HubError` when ``HF_HUB_OFFLINE`` is set (the Hub cannot be reached at all)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise HubError(
            "the Hub", None, "HF_HUB_OFFLINE is set", "unset HF_HUB_OFFLINE to reach the Hub", action="reaching"
        )


def check_token(*, token: str | None = None) -> str:
    """The user name the token belongs to.

    Raises:
        HubError: no token, an invalid one, or no network.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import LocalTokenNotFoundError

    ensure_timeout()
    try:
        return str(HfApi(token=token).whoami()["name"])
    except LocalTokenNotFoundError:
        raise HubError("the Hub", 401, "no token", _STATUS[401][1], action="token check at") from None
    except Exception as err:
        hub_error = hub_error_of("the Hub", err, action="token check at")
        if hub_error is None:
            raise
        raise hub_error from None
