"""Writing the output directory: atomically, by patching the source's safetensors files.

Shards without a changed tensor are hard-linked (copied across filesystems); shards holding a bias that is added
to are rewritten; new tensors go to one extra shard (or, for a single-file source, into the rewritten file, since a
``model.safetensors`` beside an index makes transformers ignore the index). Only one shard is in memory at a time.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from bakesteer.bake import BiasPlan, apply_to_tensor
from bakesteer.errors import OutputExistsError
from bakesteer.progress import bar
from bakesteer.source import INDEX_FILE, SINGLE_FILE

logger = logging.getLogger(__name__)

NEW_SHARD = "model-steering-biases.safetensors"


class AtomicDirectory:
    """A staging directory renamed onto ``target`` only by :meth:`commit`; removed on any failure.

    The staging and scratch directories are hidden siblings of ``target`` (same filesystem, so the final rename is
    atomic and hard links work). An existing non-empty ``target`` is refused unless ``overwrite``; with it, the old
    directory is moved aside and deleted only after the new one is in place.

    Attributes:
        path: Where to write the output.
        scratch: A temporary directory deleted on exit, committed or not.
    """

    def __init__(self, target: Path, *, overwrite: bool = False) -> None:
        self.target = Path(target).absolute()
        self.overwrite = overwrite
        check_output(self.target, overwrite=overwrite)
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
        check_output(self.target, overwrite=self.overwrite)
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


def check_output(target: Path, *, overwrite: bool) -> None:
    """Refuse an existing file, or an existing non-empty directory unless ``overwrite``.

    Raises:
        OutputExistsError: the output would replace something.
    """
    if target.is_file() or target.is_symlink():
        raise OutputExistsError(target)
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise OutputExistsError(target)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or links not permitted: copy instead
        shutil.copyfile(src, dst)


def _shard_needs_rewrite(path: Path, plan: BiasPlan, dtype: torch.dtype) -> bool:
    with safe_open(str(path), framework="pt") as handle:
        for key in handle.keys():
            if key in plan.add:
                return True
            stored = handle.get_slice(key).get_dtype()
            if stored in ("F32", "F16", "BF16") and stored != _SAFETENSORS_DTYPE[dtype]:
                return True
    return False


_SAFETENSORS_DTYPE = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


def _load_patched(path: Path, plan: BiasPlan, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    with safe_open(str(path), framework="pt") as handle:
        for key in handle.keys():
            tensor = handle.get_tensor(key)
            if tensor.is_floating_point() and tensor.dtype != dtype:
                tensor = tensor.to(dtype)
            if key in plan.add:
                tensor = apply_to_tensor(tensor, plan.add[key])
            tensors[key] = tensor
    return tensors


def _nbytes(tensors: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def write_weights(
    source_dir: Path, weight_files: tuple[str, ...], index_file: str | None, plan: BiasPlan, out: Path,
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
    metadata = {"format": "pt"}
    if index_file is None:
        (name,) = weight_files
        tensors = _load_patched(source_dir / name, plan, dtype)
        clash = set(tensors) & set(new_tensors)
        if clash:
            raise ValueError(f"the plan adds tensors that already exist: {sorted(clash)[:3]}")
        tensors.update(new_tensors)
        save_file(tensors, str(out / SINGLE_FILE), metadata=metadata)
        return [SINGLE_FILE]

    weight_map: dict[str, str] = {}
    total = 0
    for name in bar(weight_files, desc="writing shards", unit="shard"):
        src = source_dir / name
        if _shard_needs_rewrite(src, plan, dtype):
            tensors = _load_patched(src, plan, dtype)
            save_file(tensors, str(out / name), metadata=metadata)
            keys, size = list(tensors), _nbytes(tensors)
            del tensors
        else:
            _link_or_copy(src.resolve(), out / name)
            with safe_open(str(src), framework="pt") as handle:
                keys = list(handle.keys())
                size = sum(_slice_nbytes(handle.get_slice(k)) for k in keys)
        for key in keys:
            weight_map[key] = name
        total += size
    written = list(weight_files)
    if new_tensors:
        clash = set(weight_map) & set(new_tensors)
        if clash:
            raise ValueError(f"the plan adds tensors that already exist: {sorted(clash)[:3]}")
        save_file(new_tensors, str(out / NEW_SHARD), metadata=metadata)
        weight_map.update({key: NEW_SHARD for key in new_tensors})
        total += _nbytes(new_tensors)
        written.append(NEW_SHARD)
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return written


_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def _slice_nbytes(tensor_slice: Any) -> int:
    count = 1
    for dim in tensor_slice.get_shape():
        count *= dim
    return count * _ITEMSIZE.get(tensor_slice.get_dtype(), 1)


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
        ident = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
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
    for name, shard in zip(names, shards):
        save_file(shard, str(directory / name), metadata=metadata)
        weight_map.update(dict.fromkeys(shard, name))
    index = {"metadata": {"total_size": sum(_nbytes(s) for s in shards)}, "weight_map": weight_map}
    (directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return names, INDEX_FILE


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as indented, key-sorted JSON with a trailing newline."""
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def normalise_modes(directory: Path) -> None:
    """Give written files the usual mode (0666 less the umask): safetensors creates its files 0600."""
    umask = os.umask(0)
    os.umask(umask)
    for path in directory.iterdir():
        if path.is_file() and path.stat().st_nlink == 1:  # leave hard-linked source shards as they are
            path.chmod(0o666 & ~umask)
