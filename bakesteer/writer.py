"""Writing the output directory: atomically, by patching the source's safetensors files.

Shards without a changed tensor are hard-linked (a streamed copy across filesystems); shards holding a bias that is
added to are rewritten; new tensors go to one extra shard, ``model-steering-biases.safetensors``. A single-file source
is linked the same way, as ``model-base.safetensors``, the first shard of a new index (no ``model.safetensors`` is
written: beside an index, transformers would load it and ignore the biases). Only when a single file must change
(a cast, a bias added to) is it rewritten whole, with the new tensors inside. Only one tensor is in memory at a time.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import struct
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from bakesteer.bake import BiasPlan
from bakesteer.dtypes import FLOAT_CODES, ITEMSIZE, SAFETENSORS_CODE
from bakesteer.errors import OutputExistsError, OutputIsSourceError, OutputLocationError
from bakesteer.progress import bar
from bakesteer.source import INDEX_FILE, SINGLE_FILE

logger = logging.getLogger(__name__)

NEW_SHARD = "model-steering-biases.safetensors"
#: A single-file source's ``model.safetensors``, linked unchanged as the first shard of the output's index.
SINGLE_SOURCE_SHARD = "model-base.safetensors"


class AtomicDirectory:
    """A staging directory renamed onto ``target`` only by :meth:`commit`; removed on any failure.

    The staging and scratch directories are hidden siblings of ``target`` (same filesystem, so the final rename is
    atomic and hard links work). An existing non-empty ``target`` is refused unless ``overwrite``; with it, the old
    directory is moved aside and deleted only after the new one is in place.

    Attributes:
        path: Where to write the output.
        scratch: A temporary directory deleted on exit, committed or not.
    """

    def __init__(self, target: Path, *, overwrite: bool = False, source: str | Path | None = None) -> None:
        self.target = Path(target).absolute()
        self.overwrite = overwrite
        self.source = source
        check_output(self.target, overwrite=True, source=source)  # never clear debris beside a refused output
        self.recovered = recover_interrupted(self.target)
        check_output(self.target, overwrite=overwrite, source=source)
        tag = uuid.uuid4().hex[:8]
        self._created: list[Path] = []
        parent = self.target.parent
        while not parent.exists():
            self._created.append(parent)
            parent = parent.parent
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.path = self.target.parent / f".{self.target.name}.bakesteer-{tag}.partial"
        self.scratch = self.target.parent / f".{self.target.name}.bakesteer-{tag}.scratch"
        self.path.mkdir()
        self.scratch.mkdir()
        self.committed = False

    def __enter__(self) -> AtomicDirectory:
        return self

    def commit(self) -> Path:
        """Move the staging directory onto the target. Returns the target."""
        check_output(self.target, overwrite=self.overwrite, source=self.source)
        old = None
        if self.target.exists():
            old = self.target.parent / f".{self.target.name}.bakesteer-{uuid.uuid4().hex[:8]}.old"
            self.target.rename(old)
        self.path.rename(self.target)
        self.committed = True
        if old is not None:
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        return self.target

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)
        if not self.committed:
            shutil.rmtree(self.path, ignore_errors=True)
            for created in self._created:  # innermost first
                try:
                    created.rmdir()
                except OSError:
                    break


def recover_interrupted(target: Path) -> list[str]:
    """Clear what a killed run (SIGKILL, power loss) left beside ``target``: its hidden staging and scratch
    directories are removed; a previous output moved aside by an interrupted commit is put back when ``target`` is
    missing (else removed). Each step is logged as a warning.

    Returns:
        One line per step taken.
    """
    steps: list[str] = []
    parent = target.parent
    if not parent.is_dir():
        return steps
    prefix = f".{target.name}.bakesteer-"
    leftovers = sorted(p for p in parent.iterdir() if p.name.startswith(prefix))
    for old in (p for p in leftovers if p.name.endswith(".old")):
        if not target.exists():
            old.rename(target)
            steps.append(f"restored {target.name} from {old.name}, left by an interrupted run")
        else:
            shutil.rmtree(old) if old.is_dir() else old.unlink()
            steps.append(f"removed {old.name}, the previous output an interrupted run had replaced")
    for debris in (p for p in leftovers if p.name.endswith((".partial", ".scratch"))):
        shutil.rmtree(debris, ignore_errors=True) if debris.is_dir() else debris.unlink(missing_ok=True)
        steps.append(f"removed {debris.name}, left by an interrupted run")
    for step in steps:
        logger.warning("%s", step)
    return steps


def check_output(target: Path, *, overwrite: bool, source: str | Path | None = None) -> None:
    """Refuse an existing file, an existing non-empty directory unless ``overwrite``, and an output that is, contains
    or lies inside ``source`` (a local model directory or file; anything else is not checked).

    Raises:
        OutputIsSourceError: the output and the source overlap (checked first: ``overwrite`` never applies).
        OutputExistsError: the output would replace something.
    """
    if source is not None:
        check_apart(target, source)
    check_location(target)
    if target.is_file() or target.is_symlink():
        raise OutputExistsError(target)
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise OutputExistsError(target)


def check_location(target: Path) -> None:
    """The output's nearest existing ancestor is a directory this process can write, on a writable filesystem
    (missing parents are created, as ``mkdir -p`` does).

    Raises:
        OutputLocationError: a file is in the way, or the directory or its filesystem is read-only.
    """
    ancestor = Path(target).absolute().parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputLocationError(target, ancestor, "is a file, not a directory")
    if os.statvfs(ancestor).f_flag & os.ST_RDONLY:
        raise OutputLocationError(target, ancestor, "is on a read-only filesystem")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputLocationError(target, ancestor, "is not writable")


def free_bytes(target: Path) -> int:
    """Free bytes on the filesystem the output (or its nearest existing ancestor) is on."""
    ancestor = Path(target).absolute()
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    return shutil.disk_usage(ancestor).free


def check_file_target(path: Path, option: str) -> None:
    """Refuse a file to write later (``--report``) whose directory is missing or not writable, or that is a
    directory: checked before any work, so a finished run never fails on its last step.

    Raises:
        OptionError: the file cannot be written there.
    """
    from bakesteer.errors import OptionError

    parent = Path(path).absolute().parent
    if not parent.is_dir():
        raise OptionError(option, str(path), reason=f"its directory {parent} does not exist", hint="create it first")
    if Path(path).is_dir():
        raise OptionError(option, str(path), reason="it is a directory", hint="pass a file path")
    if not os.access(parent, os.W_OK):
        raise OptionError(option, str(path), reason=f"{parent} is not writable", hint="pass a path you can write")


def check_apart(target: Path, source: str | Path) -> None:
    """Refuse an output directory that is ``source``, contains it, or lies inside it (``source`` as the user gave it:
    a path that does not exist, a Hub id, is not a local model and passes).

    Raises:
        OutputIsSourceError: they overlap.
    """
    path = Path(source).expanduser()
    if not path.exists():
        return
    src, out = path.resolve(), Path(target).expanduser().resolve()
    relation = "is" if out == src else "contains" if out in src.parents else "lies inside" if src in out.parents else ""
    if relation:
        raise OutputIsSourceError(target, source, relation)


def link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or links not permitted: copy instead
        shutil.copyfile(src, dst)


def read_header(path: Path) -> tuple[dict[str, Any], int]:
    """The JSON header of a safetensors file and the offset where its data starts."""
    with path.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    return header, 8 + length


def _tensor_entries(header: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return sorted(((k, v) for k, v in header.items() if k != "__metadata__"), key=lambda kv: kv[1]["data_offsets"][0])


def _raw_bytes(tensor: torch.Tensor) -> memoryview:
    flat = tensor.detach().contiguous().cpu().reshape(-1)
    return flat.view(torch.uint8).numpy().data


def _needs_rewrite(header: dict[str, Any], plan: BiasPlan, dtype: torch.dtype) -> bool:
    return any(
        plan.touches(key) or (entry["dtype"] in FLOAT_CODES and FLOAT_CODES[entry["dtype"]] != dtype)
        for key, entry in _tensor_entries(header)
    )


def stream_rewrite(
    src: Path, dst: Path, *, plan: BiasPlan, dtype: torch.dtype, extra: dict[str, torch.Tensor] | None = None
) -> tuple[list[str], int]:
    """Copy a safetensors file tensor by tensor: cast floats to ``dtype``, apply the plan's transforms (computed in
    float32, rounded once), add ``plan.add``, and append ``extra``. Untouched tensors are copied as raw bytes, so
    memory use is one tensor, never the whole file.

    Returns:
        The keys written and the size of their data in bytes.
    """
    header, data_start = read_header(src)
    entries = _tensor_entries(header)
    extra = extra or {}
    out_header: dict[str, Any] = {"__metadata__": header.get("__metadata__") or {"format": "pt"}}
    jobs: list[Any] = []  # ("copy", start, end) | ("decode", source key, fn, output key) | tensor
    offset = 0

    def place(key: str, code: str, shape: list[int], job: Any) -> None:
        nonlocal offset
        if key in out_header:
            raise ValueError(f"the plan writes {key!r} twice")
        size = math.prod(shape) * ITEMSIZE[code]
        out_header[key] = {"dtype": code, "shape": shape, "data_offsets": [offset, offset + size]}
        jobs.append(job)
        offset += size

    for key, entry in entries:
        code, shape = entry["dtype"], entry["shape"]
        is_float = code in FLOAT_CODES
        for out_key, fn in plan.outputs_for(key):
            if fn is None and out_key not in plan.add and not (is_float and FLOAT_CODES[code] != dtype):
                begin, stop = entry["data_offsets"]
                place(out_key, code, shape, ("copy", data_start + begin, data_start + stop))
                continue
            out_shape = list(fn(torch.empty(shape, device="meta")).shape) if fn else shape
            place(out_key, SAFETENSORS_CODE[dtype] if is_float else code, out_shape, ("decode", key, fn, out_key))
    for key, tensor in extra.items():
        code = SAFETENSORS_CODE[tensor.dtype]
        place(key, code, list(tensor.shape), tensor)
    encoded = json.dumps(out_header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)  # the data section starts 8-byte aligned, as safetensors writes it
    with src.open("rb") as source, dst.open("wb") as sink, safe_open(str(src), framework="pt") as lazy:
        sink.write(struct.pack("<Q", len(encoded)))
        sink.write(encoded)
        for job in jobs:
            if isinstance(job, torch.Tensor):
                sink.write(_raw_bytes(job))
            elif job[0] == "copy":
                source.seek(job[1])
                remaining = job[2] - job[1]
                while remaining:
                    chunk = source.read(min(remaining, 1 << 24))
                    sink.write(chunk)
                    remaining -= len(chunk)
            else:
                _, key, fn, out_key = job
                tensor = lazy.get_tensor(key)
                if tensor.is_floating_point():
                    # transforms and additions in float32 from the stored values; one rounding to the output dtype
                    value = tensor.to(torch.float32)
                    if fn is not None:
                        value = fn(value)
                    if out_key in plan.add:
                        value = value + plan.add[out_key].to(torch.float32)
                    tensor = value.to(dtype)
                elif fn is not None:
                    tensor = fn(tensor)
                sink.write(_raw_bytes(tensor))
    return [k for k in out_header if k != "__metadata__"], offset


def _nbytes(tensors: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def write_weights(
    source_dir: Path,
    weight_files: tuple[str, ...],
    index_file: str | None,
    plan: BiasPlan,
    out: Path,
    dtype: torch.dtype,
) -> list[str]:
    """Write the patched safetensors weights of ``source_dir`` into ``out``.

    Args:
        source_dir: Directory of the source weights.
        weight_files: The source's safetensors files (one file, or the shards of ``index_file``).
        index_file: The source's index, or ``None`` for a single file.
        plan: New tensors and additions (float32; rounded once to ``dtype`` here).
        out: The staging directory.
        dtype: Dtype of every floating tensor in the output.

    Returns:
        The names of the weight files written.
    """
    new_tensors = {key: value.to(dtype).contiguous() for key, value in plan.new.items()}
    if index_file is None:
        (name,) = weight_files
        header, _ = read_header(source_dir / name)
        if _needs_rewrite(header, plan, dtype) or not new_tensors:
            stream_rewrite(source_dir / name, out / SINGLE_FILE, plan=plan, dtype=dtype, extra=new_tensors)
            return [SINGLE_FILE]
        # the source file stays as it is (linked) and becomes the first shard of an index; the biases are the
        # second. No model.safetensors is written: beside an index, transformers would load it instead.
        outputs = {name: SINGLE_SOURCE_SHARD}
    else:
        outputs = {name: name for name in weight_files}

    weight_map: dict[str, str] = {}
    total = 0
    for name in bar(weight_files, desc="writing shards", unit="shard"):
        src, target = source_dir / name, outputs[name]
        header, _ = read_header(src)
        if _needs_rewrite(header, plan, dtype):
            keys, size = stream_rewrite(src, out / target, plan=plan, dtype=dtype)
        else:
            link_or_copy(src.resolve(), out / target)
            entries = _tensor_entries(header)
            keys = [k for k, _ in entries]
            size = sum(e["data_offsets"][1] - e["data_offsets"][0] for _, e in entries)
        weight_map.update(dict.fromkeys(keys, target))
        total += size
    written = list(outputs.values())
    if new_tensors:
        clash = set(weight_map) & set(new_tensors)
        if clash:
            raise ValueError(f"the plan adds tensors that already exist: {sorted(clash)[:3]}")
        save_file(new_tensors, str(out / NEW_SHARD), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(new_tensors, NEW_SHARD))
        total += _nbytes(new_tensors)
        written.append(NEW_SHARD)
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return written


def save_state_dict(
    state: dict[str, torch.Tensor], directory: Path, *, max_shard_bytes: int = 5 * 1024**3
) -> tuple[tuple[str, ...], str | None]:
    """Save a state dict as safetensors, sharded at ``max_shard_bytes`` with an index when it needs several files.

    Tensors that share storage with an earlier one (tied embeddings) are saved once; the config's tie flag
    re-ties them on load. Used to materialise a dequantized GGUF model, which ``save_pretrained`` refuses.

    Returns:
        ``(weight_files, index_file)`` as :func:`bakesteer.source.find_weights` would return them.
    """
    seen: set[tuple[int, int]] = set()
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in state.items():
        ident = (tensor.untyped_storage().data_ptr(), int(tensor.storage_offset()))
        if ident in seen:
            continue
        seen.add(ident)
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensor.detach().contiguous().cpu()
        size += nbytes
    metadata = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], str(directory / SINGLE_FILE), metadata=metadata)
        return (SINGLE_FILE,), None
    names = tuple(f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards)))
    weight_map = {}
    for name, shard in zip(names, shards, strict=True):
        save_file(shard, str(directory / name), metadata=metadata)
        weight_map.update(dict.fromkeys(shard, name))
    index = {"metadata": {"total_size": sum(_nbytes(s) for s in shards)}, "weight_map": weight_map}
    (directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return names, INDEX_FILE


#: Keys transformers copies from how a tokenizer was *loaded* into the ``tokenizer_config.json`` it saves:
#: ``local_files_only`` follows ``HF_HUB_OFFLINE``, so the same conversion would otherwise differ between shells.
LOAD_ONLY_TOKENIZER_KEYS = ("local_files_only",)


def save_tokenizer(tokenizer: Any, directory: Path) -> None:
    """``tokenizer.save_pretrained(directory)`` without the load-time flags of :data:`LOAD_ONLY_TOKENIZER_KEYS`."""
    tokenizer.save_pretrained(directory)
    path = directory / "tokenizer_config.json"
    if not path.is_file():
        return
    text = path.read_text(encoding="utf-8")
    config = json.loads(text)
    if any(key in config for key in LOAD_ONLY_TOKENIZER_KEYS):
        for key in LOAD_ONLY_TOKENIZER_KEYS:
            config.pop(key, None)
        indent = 2 if text.startswith("{\n  ") else None
        path.write_text(json.dumps(config, indent=indent, ensure_ascii=False) + "\n", encoding="utf-8")


def normalise_modes(directory: Path) -> None:
    """Give written files the usual mode (0666 less the umask): safetensors creates its files 0600."""
    umask = os.umask(0)
    os.umask(umask)
    for path in directory.iterdir():
        if path.is_file() and path.stat().st_nlink == 1:  # leave hard-linked source shards as they are
            path.chmod(0o666 & ~umask)
