"""Benchmark prompt sets: Hub datasets (``hf://datasets/...``) and local ``.parquet`` files, read with ``datasets``.

A Hub dataset is named ``hf://datasets/OWNER/NAME[@REVISION][:CONFIG][/SPLIT][#COLUMN]`` and is pinned to the commit
the revision resolves to: the set's name (in ``bakesteer.json`` and the card) carries that commit, and the fingerprint
reads it. Its parquet files are chosen by the Hub's layout conventions: ``CONFIG/`` (or ``data/`` when no config is
given) holds files named ``SPLIT-*.parquet``, ``SPLIT.parquet`` or ``SPLIT/*.parquet``; the split defaults to
``train``, or to the only one there is. A revision with slashes is written URL-encoded
(``@refs%2Fconvert%2Fparquet``, the Hub's parquet export of any dataset). With ``HF_HUB_OFFLINE=1`` the commit comes
from the local cache. Nothing is downloaded unless such a set is named.

A local parquet file may name its column as ``FILE.parquet#COLUMN``. Without a column, the first of ``prompt``,
``text`` and ``instruction`` is read (or the only column).
"""

from __future__ import annotations

import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote

from bakesteer.errors import PromptSetError

logger = logging.getLogger(__name__)

PREFIX = "hf://datasets/"
_SPEC = re.compile(
    r"(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[^:/#]+))?(?::(?P<config>[^/#]+))?"
    r"(?:/(?P<split>[^/#]+))?(?:#(?P<column>.+))?"
)
_SPEC_HINT = "write hf://datasets/OWNER/NAME[@REVISION][:CONFIG][/SPLIT]#COLUMN, e.g. hf://datasets/walledai/HarmBench:standard/train#prompt"
_INSTALL_HINT = "install the reader with: pip install 'bakesteer[datasets]'"
TEXT_FIELDS = ("prompt", "text", "instruction")


@dataclass(frozen=True)
class HubDatasetSpec:
    """A parsed ``hf://datasets/...`` name."""

    repo: str
    revision: str | None
    config: str | None
    split: str | None
    column: str | None

    def pinned(self, commit: str, config: str | None, split: str) -> str:
        """The name with the resolved commit, config and split: what the record keeps."""
        text = f"{PREFIX}{self.repo}@{commit}" + (f":{config}" if config else "") + f"/{split}"
        return text + (f"#{self.column}" if self.column else "")


def is_hub_dataset(value: Any) -> bool:
    """Whether a prompt-set option names a Hub dataset."""
    return isinstance(value, str) and value.startswith(PREFIX)


def parse_spec(text: str) -> HubDatasetSpec:
    """Parse ``hf://datasets/OWNER/NAME[@REVISION][:CONFIG][/SPLIT][#COLUMN]``.

    Raises:
        PromptSetError: it does not read so.
    """
    m = _SPEC.fullmatch(text[len(PREFIX) :]) if text.startswith(PREFIX) else None
    if not m:
        raise PromptSetError(text, reason="not a Hub dataset name", hint=_SPEC_HINT)
    revision = unquote(m["revision"]) if m["revision"] else None
    return HubDatasetSpec(m["repo"], revision, m["config"], m["split"], m["column"])


def _choose(files: list[str], spec: HubDatasetSpec, where: str) -> tuple[list[str], str | None, str]:
    """The parquet files of the spec's config and split (by the Hub's layout conventions)."""
    parquet = [f for f in files if f.endswith(".parquet")]
    if not parquet:
        raise PromptSetError(
            where,
            reason="has no parquet files at that revision",
            hint="read its parquet export with @refs%2Fconvert%2Fparquet, or pass a local .parquet file",
        )
    configs = sorted({PurePosixPath(f).parts[0] for f in parquet if len(PurePosixPath(f).parts) > 1} - {"data"})
    config = spec.config
    if config is None:
        top = [f for f in parquet if len(PurePosixPath(f).parts) == 1]
        data = [f for f in parquet if PurePosixPath(f).parts[0] == "data"]
        if data or top:
            pool, prefix = (data, "data") if data else (top, "")
        elif len(configs) == 1:
            config = configs[0]
        else:
            raise PromptSetError(
                where, reason=f"has several configs ({', '.join(configs)})", hint="name one as ...NAME:CONFIG/SPLIT"
            )
    if config is not None:
        if config not in configs:
            raise PromptSetError(
                where,
                reason=f"has no config {config!r} (it has {', '.join(configs) or 'none'})",
                hint="name one of those",
            )
        pool, prefix = [f for f in parquet if PurePosixPath(f).parts[0] == config], config
    splits: dict[str, list[str]] = {}
    for f in pool:
        rest = PurePosixPath(f).relative_to(prefix) if prefix else PurePosixPath(f)
        name = rest.parts[0] if len(rest.parts) > 1 else re.split(r"[-.]", rest.name, maxsplit=1)[0]
        splits.setdefault(name, []).append(f)
    split = spec.split or ("train" if "train" in splits else (next(iter(splits)) if len(splits) == 1 else None))
    if split is None or split not in splits:
        raise PromptSetError(
            where,
            reason=f"has no split {split!r} (it has {', '.join(sorted(splits))})"
            if split
            else f"has several splits ({', '.join(sorted(splits))})",
            hint="name one as ...NAME[:CONFIG]/SPLIT",
        )
    return sorted(splits[split]), config, split


def _cached_snapshot(spec: HubDatasetSpec, where: str) -> tuple[Path, list[str], str]:
    """Offline: the snapshot the local cache holds for the revision (a commit, or the commit its ref points at), and
    the files it holds (an earlier read downloaded only the files it chose)."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    storage = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=spec.repo, repo_type="dataset")
    revision = spec.revision or "main"
    ref = storage / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else revision
    folder = storage / "snapshots" / commit
    if not re.fullmatch(r"[0-9a-f]{40}", commit) or not folder.is_dir():
        raise PromptSetError(
            where, reason="not in the local cache and HF_HUB_OFFLINE=1", hint="unset HF_HUB_OFFLINE to download it once"
        )
    return folder, [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()], commit


def _hub_files(spec: HubDatasetSpec, where: str) -> tuple[Path, list[str], str]:
    """The local snapshot folder, the repository's file list and the commit (online: from the Hub; offline: from the
    cache)."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        if constants.HF_HUB_OFFLINE:
            return _cached_snapshot(spec, where)
        info = HfApi().dataset_info(spec.repo, revision=spec.revision)
        return Path(), [s.rfilename for s in info.siblings or []], str(info.sha)
    except RepositoryNotFoundError:
        raise PromptSetError(where, reason="no such dataset on the Hub", hint="check OWNER/NAME") from None
    except RevisionNotFoundError:
        raise PromptSetError(where, reason=f"no revision {spec.revision!r}", hint="check @REVISION") from None
    except LocalEntryNotFoundError:
        raise PromptSetError(
            where,
            reason="not in the local cache and HF_HUB_OFFLINE=1",
            hint="unset HF_HUB_OFFLINE to download it once",
        ) from None
    except HfHubHTTPError as err:
        raise PromptSetError(where, reason=f"the Hub answered {err}", hint="retry, or check the name") from None


def _read_parquet(paths: list[Path], column: str | None, where: str) -> list[str]:
    try:
        import datasets
    except ImportError:
        raise PromptSetError(where, reason="reading parquet needs the datasets package", hint=_INSTALL_HINT) from None
    import pyarrow.parquet as pq

    datasets.disable_progress_bars()
    try:
        rows = sum(pq.ParquetFile(p).metadata.num_rows for p in paths)
    except Exception as err:
        raise PromptSetError(
            where, reason=f"is not a readable parquet file ({type(err).__name__})", hint="check the file"
        ) from None
    if rows == 0:
        raise PromptSetError(where, reason="is empty", hint="choose a split that has rows")
    with tempfile.TemporaryDirectory(prefix="bakesteer-parquet-") as cache:
        try:
            table = datasets.Dataset.from_parquet([str(p) for p in paths], cache_dir=cache, keep_in_memory=True)
        except Exception as err:
            raise PromptSetError(
                where, reason=f"is not a readable parquet file ({type(err).__name__})", hint="check the file"
            ) from None
        names = list(table.column_names)
        if column is None:
            column = next((c for c in TEXT_FIELDS if c in names), names[0] if len(names) == 1 else None)
            if column is None:
                raise PromptSetError(
                    where, reason=f"no prompt column among {names}", hint="name it with #COLUMN at the end"
                )
        elif column not in names:
            raise PromptSetError(where, reason=f"has no column {column!r} (it has {names})", hint="fix #COLUMN")
        values = table[column]
    if not values:
        raise PromptSetError(where, reason="is empty", hint="choose a split that has rows")
    bad = next((i for i, v in enumerate(values) if not isinstance(v, str)), None)
    if bad is not None:
        raise PromptSetError(
            where,
            reason=f"column {column!r} holds {type(values[bad]).__name__}, not text (row {bad})",
            hint="name a text column with #COLUMN",
        )
    return list(values)


def read_hub_dataset(text: str) -> tuple[str, list[str], dict[str, Any]]:
    """The prompts of a Hub dataset split, with its pinned name and source record.

    Raises:
        PromptSetError: a malformed name, an unknown repository, revision, config, split or column, an empty split.
    """
    from huggingface_hub import snapshot_download

    spec = parse_spec(text)
    folder, files, commit = _hub_files(spec, text)
    chosen, config, split = _choose(files, spec, text)
    if folder == Path():  # by the name asked for, so that the cache records the branch for offline reads
        folder = Path(snapshot_download(spec.repo, repo_type="dataset", revision=spec.revision, allow_patterns=chosen))
        commit = folder.name  # the snapshot's commit (the same, unless the branch moved in between)
    prompts = _read_parquet([folder / f for f in chosen], spec.column, text)
    source = {"repo": spec.repo, "revision": commit, "config": config, "split": split, "column": spec.column}
    logger.info("read %d prompts from %s@%s (%s)", len(prompts), spec.repo, commit, ", ".join(chosen))
    return spec.pinned(commit, config, split), prompts, source


def read_parquet_file(path: Path) -> tuple[str, list[str]]:
    """The prompts of a local ``.parquet`` file (``FILE.parquet#COLUMN`` names the column).

    Raises:
        PromptSetError: missing, unreadable, no such column, empty.
    """
    text = str(path)
    column = None
    if not Path(text).is_file() and "#" in text:
        text, column = text.rsplit("#", 1)
    file = Path(text)
    if not file.is_file():
        raise PromptSetError(file.name, reason="file not found", hint="check the path")
    return file.name + (f"#{column}" if column else ""), _read_parquet([file], column, file.name)


def is_parquet(path: Path) -> bool:
    """Whether a prompt-set path is a parquet file (``.parquet``, optionally with ``#COLUMN``)."""
    return str(path).split("#", 1)[0].lower().endswith(".parquet")
