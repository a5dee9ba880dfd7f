"""Where a model's weights live while bakesteer runs it: one device, or an accelerate device map.

Without a device map the model is loaded whole and moved to ``--device`` (the fastest path when it fits). With
``--device-map`` transformers hands placement to accelerate: layers are spread over the GPUs in ``--max-memory``,
then CPU memory, then the disk (``--offload-folder``); accelerate's hooks move each layer's weights to its execution
device for its forward pass. bakesteer's own hooks work on such models unchanged: they run on a block's output, which
is on that block's execution device, and each offset is moved to the device and dtype of the tensor it is added to.
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bakesteer.errors import OptionError, UnsupportedCheckpointError
from bakesteer.source import ModelSource

logger = logging.getLogger(__name__)

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)


def parse_max_memory(text: str) -> dict[int | str, str]:
    """Parse ``0=70GiB,1=70GiB,cpu=200GiB`` into accelerate's ``max_memory`` (GPU indices as ints).

    Raises:
        OptionError: a malformed entry, an unknown device or an unreadable size.
    """
    hint = "use DEVICE=SIZE pairs, e.g. --max-memory 0=70GiB,1=70GiB,cpu=200GiB (DEVICE: a GPU index, cpu, mps)"
    out: dict[int | str, str] = {}
    for part in str(text).split(","):
        if not part.strip():
            continue
        device, sep, size = part.partition("=")
        device, size = device.strip().lower(), size.strip()
        if not sep or not device or not size:
            raise OptionError("--max-memory", text, reason=f"cannot parse {part.strip()!r}", hint=hint)
        if not (device.isdigit() or device in ("cpu", "mps")):
            raise OptionError("--max-memory", text, reason=f"unknown device {device!r}", hint=hint)
        if not _SIZE.match(size):
            raise OptionError("--max-memory", text, reason=f"cannot read the size {size!r}", hint=hint)
        out[int(device) if device.isdigit() else device] = size.replace(" ", "")
    if not out:
        raise OptionError("--max-memory", text, reason="no device given", hint=hint)
    return out


def check_max_memory(text: str) -> dict[int | str, str]:
    """:func:`parse_max_memory`, and every GPU index it names exists on this machine.

    Raises:
        OptionError: malformed, or a GPU that is not there.
    """
    out = parse_max_memory(text)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for key in out:
        if isinstance(key, int) and key >= gpus:
            raise OptionError(
                "--max-memory",
                text,
                reason=f"GPU {key} does not exist here ({gpus} CUDA device{'s' if gpus != 1 else ''})",
                hint="use cpu=SIZE, or the index of a GPU this machine has",
            )
    return out


@dataclass(frozen=True)
class Placement:
    """How a model is loaded: onto one ``device``, or through an accelerate ``device_map``.

    Attributes:
        device: The device without a device map, and where inputs go when the map does not say.
        device_map: ``None``, or one of :data:`bakesteer.options.DEVICE_MAPS`.
        max_memory: Accelerate's ``max_memory`` (``None``: accelerate's defaults).
        offload_folder: Where layers that fit nowhere else are offloaded to (safetensors sources are read in
            place; other weights are written there).
    """

    device: torch.device
    device_map: str | None = None
    max_memory: dict[int | str, str] | None = None
    offload_folder: Path | None = None

    @property
    def mapped(self) -> bool:
        """Whether accelerate places the model."""
        return self.device_map is not None

    def load_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``from_pretrained`` (empty without a device map)."""
        if self.device_map is None:
            return {}
        kwargs: dict[str, Any] = {"device_map": self.device_map}
        if self.max_memory is not None:
            kwargs["max_memory"] = dict(self.max_memory)
        if self.offload_folder is not None:
            kwargs["offload_folder"] = str(self.offload_folder)
        return kwargs

    def place(self, model: Any) -> Any:
        """Move ``model`` to :attr:`device` unless accelerate placed it; returns it in eval mode."""
        if self.device_map is None:
            model.to(self.device)
        return model.eval()

    def with_offload_folder(self, folder: Path) -> Placement:
        """This placement, with ``folder`` as the offload folder when none was given (a device map only)."""
        if self.device_map is None or self.offload_folder is not None:
            return self
        return Placement(self.device, self.device_map, self.max_memory, folder)


def input_device(model: Any) -> torch.device:
    """Where a model's input ids belong: its input embedding's execution device.

    For a model dispatched by accelerate that is the device its hook runs the embedding on (an offloaded embedding's
    weights are on ``meta`` between calls); otherwise the embedding weight's device.
    """
    embedding = model.get_input_embeddings()
    for module in (embedding, model):
        hook = getattr(module, "_hf_hook", None)
        execution = getattr(hook, "execution_device", None)
        if execution is not None:
            return torch.device(execution) if not isinstance(execution, int) else torch.device("cuda", execution)
    device = embedding.weight.device
    return torch.device("cpu") if device.type == "meta" else device


def placement_from(options: Any) -> Placement:
    """The :class:`Placement` that ``options`` (a :class:`~bakesteer.options.ConvertOptions`) asks for.

    ``--max-memory`` or ``--offload-folder`` without ``--device-map`` mean ``--device-map auto``.

    Raises:
        OptionError: an unknown device, or a malformed ``--max-memory`` (``options.check()`` refuses the rest).
    """
    device = resolve_device(options.device)
    device_map = options.device_map
    if device_map is None and (options.max_memory or options.offload_folder):
        device_map = "auto"
    max_memory = check_max_memory(options.max_memory) if options.max_memory else None
    folder = Path(options.offload_folder) if options.offload_folder else None
    return Placement(device, device_map, max_memory, folder)


def load_causal_lm(directory: Path, dtype: torch.dtype, placement: Placement, **kwargs: Any) -> Any:
    """``AutoModelForCausalLM.from_pretrained(directory, ...)`` placed as ``placement`` says, in eval mode.

    Returns:
        The model, or ``(model, loading_info)`` with ``output_loading_info=True``.
    """
    from transformers import AutoModelForCausalLM

    loaded: Any = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, **placement.load_kwargs(), **kwargs)
    model = loaded[0] if isinstance(loaded, tuple) else loaded
    placement.place(model)
    device_map = getattr(model, "hf_device_map", None)
    if placement.mapped and device_map:
        logger.info("device map of %s: %s", Path(directory).name, device_summary(device_map))
    return loaded


def device_summary(device_map: dict[str, Any]) -> dict[str, int]:
    """How many of a device map's entries sit on each device (``{"cpu": 3, "disk": 12}``)."""
    counts: dict[str, int] = {}
    for device in device_map.values():
        key = f"cuda:{device}" if isinstance(device, int) else str(device)
        counts[key] = counts.get(key, 0) + 1
    return counts


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; anything else must be a device torch knows and has."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise OptionError(
            "--device", name, reason="unknown device", hint="use cpu, cuda, cuda:N, mps or auto"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise OptionError("--device", name, reason="CUDA is not available here", hint="use --device cpu")
    return device


def free_memory() -> None:
    """Return freed memory now (call after the last reference to a model is deleted).

    On glibc, freed blocks below malloc's mmap threshold (which grows to 32 MiB as large blocks are freed: most of a
    model's tensors) stay in the heap and keep counting as resident; ``malloc_trim`` hands them back to the system
    before the next model is loaded.
    """
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    _malloc_trim()


@functools.lru_cache(maxsize=1)
def _libc_trim() -> Any:
    import ctypes
    import ctypes.util
    import platform

    if platform.system() != "Linux":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # musl and others have no malloc_trim
        return None


def _malloc_trim() -> None:
    trim = _libc_trim()
    if trim is not None:
        trim(0)


def load_model(source: ModelSource, dtype: torch.dtype, placement: Placement) -> tuple[Any, Any]:
    """Load the ``*ForCausalLM`` model (eval mode, placed by ``placement``) and its tokenizer with plain
    transformers."""
    from transformers import AutoTokenizer

    kwargs: dict[str, Any] = {"gguf_file": source.gguf_file} if source.gguf_file else {"use_safetensors": True}
    logger.info("loading %s (%s) as %s, %s", source.model_id, source.kind, dtype, placement)
    model = load_causal_lm(source.directory, dtype, placement, **kwargs)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.directory, **kwargs)
    except Exception as err:  # transformers raises OSError, ValueError or the backend's own errors
        from bakesteer.checkfiles import first_line

        raise UnsupportedCheckpointError(
            source.model_id,
            reason=f"its tokenizer does not load ({first_line(err)})",
            hint="restore the tokenizer files (tokenizer.json, tokenizer_config.json, ...) from the model's source",
        ) from None
    tokenizer.padding_side = "left"
    return model, tokenizer
