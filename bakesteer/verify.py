"""``bakesteer verify``: prove that an output is exactly its base plus the offsets its record states, and nothing else.

Everything an output holds is rebuilt from two things a downloader can check: the base at its recorded revision and
``steering.safetensors``. The offsets are recomputed in float32 (``k * mu_l / sqrt(d_model) * c_l``) and rounded once
to the output dtype, as they were written; the bias plan, ``config.json`` and the copied tokenizer files follow from
the base by the same deterministic code that wrote them. Then every file is compared by SHA-256:

- a base shard the output links is compared with the base's own file, by the SHA-256 the Hub reports for it (no
  base weights are downloaded) or by hashing a local base;
- the bias shard is rebuilt from the recomputed offsets; a difference names the tensor, the layer and by how much;
- a shard the conversion rewrote (a cast, an existing bias added to) is rebuilt from the base's shard;
- a file the plan does not explain, or a tensor in none of the plan's places, is a difference.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bakesteer.errors import BakesteerError, ModelNotFoundError, NotAnOutputError
from bakesteer.record import (
    CARD_FILE,
    EVAL_FILE,
    MU_PLOT,
    RECORD_FILE,
    SWEEP_PLOT,
    VECTOR_FILE,
    Record,
)
from bakesteer.source import is_path, sha256_contents

logger = logging.getLogger(__name__)

#: Files an output holds that are the claim itself or describe it (the record, the vector, the card and its plots):
#: checked for consistency, not rebuilt from the base.
DESCRIPTIVE_FILES = frozenset({RECORD_FILE, VECTOR_FILE, CARD_FILE, MU_PLOT, SWEEP_PLOT, EVAL_FILE})


class VerifyError(BakesteerError, ValueError):
    """``verify`` cannot run as asked: the base is not recorded or cannot be reached, or the output cannot be read.

    Attributes:
        subject: The output or base named.
        reason: What is missing.
    """

    def __init__(self, subject: str, *, reason: str, hint: str) -> None:
        self.subject = subject
        self.reason = reason
        super().__init__(f"cannot verify {subject}: {reason}", hint=hint)


@dataclass(frozen=True)
class Difference:
    """One way the output is not its base plus the stated offsets.

    Attributes:
        where: The file, tensor (``file:tensor``) or record field.
        what: What differs, and by how much.
    """

    where: str
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


@dataclass
class VerifyReport:
    """What :func:`verify` compared.

    Attributes:
        output: The output directory's name or the repository id.
        base: ``model_id@revision`` of the base it was compared with.
        k: The recorded strength.
        band: The recorded band, ``(start, end)`` end excluded.
        files: How many files were compared.
        linked: The output's shards that are the base's own files.
        differences: Everything that differs; empty when the output verifies.
        downloaded_bytes: Bytes of the Hub files fetched (from the Hub or the client's cache; zero when local).
        seconds: Wall time.
    """

    output: str
    base: str
    k: float
    band: tuple[int, int]
    files: int = 0
    linked: list[str] = field(default_factory=list)
    differences: list[Difference] = field(default_factory=list)
    downloaded_bytes: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Whether the output is exactly its base plus the stated offsets."""
        return not self.differences

    def verdict(self) -> str:
        """One line: what was proven, or how many differences were found."""
        start, end = self.band
        if self.ok:
            return (
                f"verified: {self.output} is {self.base} plus k={self.k:g} offsets in layers {start}-{end - 1} and "
                f"nothing else ({self.files} files; {len(self.linked)} base shards identical)"
            )
        count = len(self.differences)
        return f"NOT verified: {self.output} differs from {self.base} plus its stated offsets in {count} place(s)"

    def to_dict(self) -> dict[str, Any]:
        return {
            "output": self.output,
            "base": self.base,
            "k": self.k,
            "band": list(self.band),
            "ok": self.ok,
            "files": self.files,
            "linked": self.linked,
            "differences": [{"where": d.where, "what": d.what} for d in self.differences],
            "downloaded_bytes": self.downloaded_bytes,
            "seconds": round(self.seconds, 3),
        }


# --------------------------------------------------------------------------- where the files are


class LocalFiles:
    """A directory's files."""

    def __init__(self, directory: Path, label: str) -> None:
        self.directory = Path(directory)
        self.label = label
        self.downloaded = 0

    def names(self) -> set[str]:
        return {p.name for p in self.directory.iterdir() if p.is_file() and not p.name.startswith(".")}

    def sha256(self, name: str) -> str:
        return sha256_contents(self.directory / name)

    def path(self, name: str) -> Path:
        return self.directory / name


class HubFiles:
    """A Hub repository's files at one commit: SHA-256s from the tree (LFS files are never fetched for them), and
    files downloaded only when asked for."""

    def __init__(self, repo_id: str, revision: str | None, folder: Path, token: str | None = None) -> None:
        from huggingface_hub import HfApi
        from huggingface_hub.hf_api import RepoFile

        from bakesteer.hubnet import ensure_timeout

        ensure_timeout()
        self.api = HfApi(token=token)
        self.repo_id = repo_id
        with _hub_errors(repo_id):
            self.revision = self.api.repo_info(repo_id, revision=revision or "main").sha
            tree = self.api.list_repo_tree(repo_id, revision=self.revision, recursive=True)
            self.tree = {f.path: f for f in tree if isinstance(f, RepoFile) and "/" not in f.path}
        self.label = f"{repo_id}@{self.revision}"
        self.folder = folder
        self.downloaded = 0

    def names(self) -> set[str]:
        return {name for name in self.tree if name != ".gitattributes"}

    def sha256(self, name: str) -> str:
        lfs = getattr(self.tree[name], "lfs", None)
        if lfs is not None:
            return str(lfs.sha256)
        return sha256_contents(self.path(name))

    def path(self, name: str) -> Path:
        target = self.folder / name
        if not target.is_file():
            with _hub_errors(self.repo_id):
                self.api.hf_hub_download(self.repo_id, name, revision=self.revision, local_dir=self.folder)
            self.downloaded += target.stat().st_size
        return target


@contextmanager
def _hub_errors(repo_id: str) -> Iterator[None]:
    """Hub failures as one :class:`~bakesteer.errors.HubError` naming the repository."""
    from bakesteer.hub import hub_error_of

    try:
        yield
    except BakesteerError:
        raise
    except Exception as err:
        hub_error = hub_error_of(repo_id, err, action="read")
        if hub_error is None:
            raise
        raise hub_error from None


def open_output(target: str, folder: Path, token: str | None = None) -> tuple[LocalFiles | HubFiles, Record]:
    """The output's files (a directory, or ``OWNER/NAME[@REVISION]`` on the Hub) and its record.

    Raises:
        NotAnOutputError: no readable ``bakesteer.json`` or no ``steering.safetensors``.
    """
    from bakesteer.record import read_output

    if is_path(target):
        out = read_output(Path(target))
        return LocalFiles(out.directory, out.directory.name), out.record
    repo_id, _, revision = target.partition("@")
    files = HubFiles(repo_id, revision or None, folder / "output", token)
    missing = [name for name in (RECORD_FILE, VECTOR_FILE) if name not in files.names()]
    if missing:
        raise NotAnOutputError(files.label, reason=f"no {missing[0]}")
    text = files.path(RECORD_FILE).read_text(encoding="utf-8")
    return files, Record.from_json(text, where=files.label)


def open_base(record: Record, base: str | None, folder: Path, token: str | None = None) -> tuple[Any, list[Difference]]:
    """The base's files, and a difference when the base given is not the one recorded.

    A GGUF base is hashed against its record, then dequantized into ``folder`` exactly as the conversion did.

    Raises:
        VerifyError: a local or GGUF source was recorded and no ``base`` was given.
        ModelNotFoundError, HubError: the base cannot be read.
    """
    from bakesteer.dtypes import DTYPES
    from bakesteer.source import resolve_source

    recorded = record.base_model
    differences: list[Difference] = []
    if base is None:
        if recorded["kind"] != "hub":
            raise VerifyError(
                recorded["model_id"],
                reason=f"it was converted from a {'GGUF file' if recorded['kind'] == 'gguf' else 'local directory'} "
                "whose path is not recorded",
                hint=f"pass that base with --base (its identity is {recorded['revision']})",
            )
        return HubFiles(recorded["model_id"], recorded["revision"], folder / "base", token), differences
    if not is_path(base):
        repo_id, _, revision = base.partition("@")
        files = HubFiles(repo_id, revision or None, folder / "base", token)
        if (repo_id, files.revision) != (recorded["model_id"], recorded["revision"]):
            differences.append(
                Difference(
                    "base", f"{files.label} is not the recorded base {recorded['model_id']}@{recorded['revision']}"
                )
            )
        return files, differences
    if not Path(base).exists():
        raise ModelNotFoundError(base, reason="no such file or directory")
    source = resolve_source(base)
    if source.revision != recorded["revision"]:
        differences.append(
            Difference("base", f"{base} has identity {source.revision}, the output records {recorded['revision']}")
        )
    if source.gguf_file:
        from bakesteer.dequantize import materialize_gguf

        target = folder / "dequantized"
        target.mkdir(parents=True, exist_ok=True)
        source = materialize_gguf(source, DTYPES[record.dtype], target)
    return LocalFiles(source.directory, f"{source.model_id}@{source.revision}"), differences


# --------------------------------------------------------------------------- rebuilding what the output must hold


@dataclass
class _Expected:
    """What the output must hold, rebuilt from the base and the vector."""

    plan: Any
    dtype: torch.dtype
    offsets: torch.Tensor
    layers_prefix: str
    down_bias: str
    folder: Path
    base_weights: list[str]


def _expected(record: Record, vector_path: Path, base: Any, folder: Path) -> _Expected:
    """The bias plan the record implies for the base, and the rebuilt config and small files in ``folder``."""
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    from bakesteer.architectures import spec_for
    from bakesteer.bake import bias_plan, output_config_text, write_remote_code
    from bakesteer.configfiles import CONFIG_FILE, GENERATION_CONFIG_FILE, is_tokenizer_file, tokenizer_class_for_4
    from bakesteer.dtypes import DTYPES
    from bakesteer.vector import SteeringVector
    from bakesteer.writer import INDEX_FILE, save_tokenizer

    names = base.names()
    small = sorted(n for n in names if n == CONFIG_FILE or n == GENERATION_CONFIG_FILE or is_tokenizer_file(n))
    base_dir = base.path(CONFIG_FILE).parent
    for name in small:
        base.path(name)
    config = AutoConfig.from_pretrained(base_dir)
    spec = spec_for(config, allow_remote_code=record.strategy == "remote_code")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    dtype = DTYPES[record.dtype]
    vector = SteeringVector.load(vector_path)
    offsets = vector.offsets(record.band, record.k)  # k * mu_l / sqrt(d_model) * c_l in float32, zero elsewhere
    plan = bias_plan(model, spec, offsets, dtype)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).write_text(
        output_config_text(base_dir / CONFIG_FILE, model.config, spec, plan, dtype), encoding="utf-8"
    )
    if spec.remote is not None:
        write_remote_code(folder, spec, record.version)
    for name in small:
        if name != CONFIG_FILE:
            (folder / name).write_bytes(base.path(name).read_bytes())
    if GENERATION_CONFIG_FILE not in small:
        GenerationConfig.from_model_config(model.config).save_pretrained(folder)
    if not any(is_tokenizer_file(name) for name in small):
        from transformers import AutoTokenizer

        save_tokenizer(AutoTokenizer.from_pretrained(base_dir), folder)
    tokenizer_class_for_4(folder)
    if INDEX_FILE in names:
        weight_map = json.loads(base.path(INDEX_FILE).read_text(encoding="utf-8"))["weight_map"]
        base_weights = sorted(set(weight_map.values()))
    else:
        base_weights = ["model.safetensors"]
    return _Expected(plan, dtype, offsets, spec.layers, spec.down_bias, folder, base_weights)


def _layer_of(key: str, expected: _Expected) -> str:
    prefix = expected.layers_prefix + "."
    if key.startswith(prefix):
        index = key[len(prefix) :].split(".", 1)[0]
        if index.isdigit():
            return f" (layer {index})"
    return ""


def _tensor_differences(
    name: str, actual: Path, wanted: dict[str, torch.Tensor], expected: _Expected
) -> list[Difference]:
    """Tensor by tensor: what is extra, missing, or differs (max |difference|, and the layer)."""
    from safetensors import safe_open

    found = []
    with safe_open(str(actual), framework="pt") as handle:
        keys = set(handle.keys())
        for key in sorted(keys - set(wanted)):
            found.append(Difference(f"{name}:{key}", "a tensor the plan does not explain"))
        for key in sorted(set(wanted) - keys):
            found.append(Difference(f"{name}:{key}", "missing"))
        for key in sorted(keys & set(wanted)):
            have, want = handle.get_tensor(key), wanted[key]
            if have.dtype != want.dtype or have.shape != want.shape:
                found.append(
                    Difference(
                        f"{name}:{key}", f"{have.dtype} {list(have.shape)}, expected {want.dtype} {list(want.shape)}"
                    )
                )
            elif not _same_bits(have, want):
                diff = float((have.double() - want.double()).abs().max()) if have.is_floating_point() else math.nan
                found.append(Difference(f"{name}:{key}", f"differs by up to {diff:.3g}{_layer_of(key, expected)}"))
    return found


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit for bit (NaNs and signed zeros included)."""
    return torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))


def _bias_shard(expected: _Expected) -> dict[str, torch.Tensor]:
    return {key: value.to(expected.dtype).contiguous() for key, value in expected.plan.new.items()}


# --------------------------------------------------------------------------- comparing


def verify(target: str | Path, *, base: str | None = None, token: str | None = None) -> VerifyReport:
    """Prove that an output is exactly its base plus the offsets it states, and nothing else.

    Args:
        target: An output directory, or ``OWNER/NAME[@REVISION]`` of one on the Hub (only its small files and the
            bias shard are downloaded).
        base: The base, when it is not the recorded Hub revision: a directory, a ``.gguf`` file or
            ``OWNER/NAME[@REVISION]``; a base whose identity is not the recorded one is a difference.
        token: For private repositories; defaults to ``HF_TOKEN`` or the stored login.

    Returns:
        A :class:`VerifyReport`; ``report.ok`` says whether it verified.

    Raises:
        NotAnOutputError: the target is not a bakesteer output.
        VerifyError: the base is not recorded and not given.
        HubError, ModelNotFoundError: the output or the base cannot be read.
    """
    from bakesteer.fingerprint import metadata_fingerprint

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bakesteer-verify-") as scratch:
        folder = Path(scratch)
        out, record = open_output(str(target), folder, token)
        base_files, differences = open_base(record, base, folder, token)
        report = VerifyReport(out.label, base_files.label, record.k, record.band, differences=differences)
        if metadata_fingerprint(record) != record.fingerprint:
            report.differences.append(Difference(RECORD_FILE, "its fingerprint does not match its contents (edited)"))
        report.differences += _claims_agree(record, out.path(VECTOR_FILE))
        expected = _expected(record, out.path(VECTOR_FILE), base_files, folder / "expected")
        _compare_files(out, record, base_files, expected, report)
        report.downloaded_bytes = out.downloaded + base_files.downloaded
    report.seconds = time.perf_counter() - started
    return report


def _claims_agree(record: Record, vector_path: Path) -> list[Difference]:
    """The record's k and band against those ``steering.safetensors`` was written with, and against the options."""
    from safetensors import safe_open

    with safe_open(str(vector_path), framework="pt") as handle:
        meta = handle.metadata() or {}
    start, end = record.band
    found = []
    if "alpha" in meta:
        written = (float(meta["alpha"]), int(meta["band_start"]), int(meta["band_end"]))
        if written != (record.k, start, end):
            found.append(
                Difference(
                    RECORD_FILE,
                    f"states k={record.k:g} in layers {start}-{end - 1}; {VECTOR_FILE} was written with "
                    f"k={written[0]:g} in layers {written[1]}-{written[2] - 1}",
                )
            )
    alpha = record.options.get("alpha")
    if record.method.get("k_chosen_by") == "user" and alpha is not None and float(alpha) != record.k:
        found.append(Difference(RECORD_FILE, f"states k={record.k:g} but its options say --alpha {alpha}"))
    return found


def _compare_files(out: Any, record: Record, base: Any, expected: _Expected, report: VerifyReport) -> None:
    from bakesteer.writer import INDEX_FILE, NEW_SHARD, SINGLE_FILE, SINGLE_SOURCE_SHARD

    names = out.names()
    listed = record.files or set()
    weights = set(record.data["output"]["weight_files"])
    rebuilt = {p.name for p in expected.folder.iterdir() if p.is_file()}
    for name in sorted(names - listed):
        report.differences.append(Difference(name, "not part of the output its record lists"))
    for name in sorted((listed | rebuilt | weights) - names - {INDEX_FILE}):
        if name in rebuilt or name in weights or name in (RECORD_FILE, VECTOR_FILE):
            report.differences.append(Difference(name, "missing"))
    for name in sorted(names & rebuilt):
        if out.sha256(name) != sha256_contents(expected.folder / name):
            report.differences.append(Difference(name, _what_differs(out.path(name), expected.folder / name)))
    report.files = len(names & (rebuilt | weights | {INDEX_FILE}))
    for name in sorted(names - rebuilt - DESCRIPTIVE_FILES - weights - {INDEX_FILE}):
        if name in listed:
            report.differences.append(Difference(name, "a file the plan does not explain"))
    single_base = expected.base_weights == [SINGLE_FILE]
    for name in sorted(weights & names):
        if name == NEW_SHARD:
            _check_bias_shard(out, expected, report)
            continue
        counterpart = SINGLE_FILE if name == SINGLE_SOURCE_SHARD else name
        if counterpart in base.names() and out.sha256(name) == base.sha256(counterpart):
            report.linked.append(name)
            continue
        extra = _bias_shard(expected) if name == SINGLE_FILE and single_base and NEW_SHARD not in weights else None
        _check_rewritten(out, name, base, counterpart, expected, extra, report)
    if INDEX_FILE in names:
        _check_index(out, expected, report)


def _what_differs(actual: Path, wanted: Path) -> str:
    """For a JSON file, the first key that differs; otherwise the sizes."""
    try:
        have, want = json.loads(actual.read_text(encoding="utf-8")), json.loads(wanted.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return f"differs from the base's ({actual.stat().st_size} bytes, expected {wanted.stat().st_size})"
    if isinstance(have, dict) and isinstance(want, dict):
        for key in sorted(set(have) | set(want)):
            if have.get(key) != want.get(key):
                return f"{key!r} is {json.dumps(have.get(key))[:60]}, expected {json.dumps(want.get(key))[:60]}"
    return "differs in layout only (same JSON values)"


def _check_bias_shard(out: Any, expected: _Expected, report: VerifyReport) -> None:
    """The bias shard against the offsets recomputed from ``steering.safetensors`` (written the way the writer
    writes it), tensor by tensor when it differs."""
    from safetensors.torch import save_file

    from bakesteer.writer import NEW_SHARD

    wanted = _bias_shard(expected)
    rebuilt = expected.folder / NEW_SHARD
    save_file(wanted, str(rebuilt), metadata={"format": "pt"})
    if out.sha256(NEW_SHARD) == sha256_contents(rebuilt):
        return
    found = _tensor_differences(NEW_SHARD, out.path(NEW_SHARD), wanted, expected)
    report.differences.extend(found or [Difference(NEW_SHARD, "same tensors, different header or layout")])


def _check_rewritten(
    out: Any, name: str, base: Any, counterpart: str, expected: _Expected, extra: Any, report: VerifyReport
) -> None:
    """A shard the conversion rewrote (or one that should be the base's file and is not): rebuilt from the base's
    shard with the plan, then compared."""
    from safetensors import safe_open

    from bakesteer.writer import stream_rewrite

    if counterpart not in base.names():
        report.differences.append(Difference(name, "a weight file with no counterpart in the base"))
        return
    source = base.path(counterpart)
    rebuilt = expected.folder / f"rebuilt-{name}"
    stream_rewrite(source, rebuilt, plan=expected.plan, dtype=expected.dtype, extra=extra)
    if out.sha256(name) == sha256_contents(rebuilt):
        return
    with safe_open(str(rebuilt), framework="pt") as handle:
        wanted = {key: handle.get_tensor(key) for key in handle.keys()}
    found = _tensor_differences(name, out.path(name), wanted, expected)
    report.differences.extend(found or [Difference(name, f"differs from the base's {counterpart} in its header")])


def _check_index(out: Any, expected: _Expected, report: VerifyReport) -> None:
    """Every planned bias is mapped to the bias shard, and nothing else is."""
    from bakesteer.writer import INDEX_FILE, NEW_SHARD

    weight_map = json.loads(out.path(INDEX_FILE).read_text(encoding="utf-8")).get("weight_map", {})
    mapped = {key for key, shard in weight_map.items() if shard == NEW_SHARD}
    planned = set(expected.plan.new)
    for key in sorted(mapped - planned):
        report.differences.append(Difference(f"{INDEX_FILE}:{key}", "mapped to the bias shard but not in the plan"))
    for key in sorted(planned - mapped):
        report.differences.append(Difference(f"{INDEX_FILE}:{key}", "a planned bias the index does not map"))
