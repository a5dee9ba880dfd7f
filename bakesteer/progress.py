"""Progress bars the caller can silence. The library never prints; it shows tqdm bars on stderr unless disabled."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
_enabled = True


def set_progress_bars(enabled: bool) -> None:
    """Turn bakesteer's progress bars (and transformers' and huggingface_hub's) on or off."""
    global _enabled
    _enabled = enabled
    import huggingface_hub.utils as hf_utils
    import transformers.utils.logging as tf_logging

    if enabled:
        hf_utils.enable_progress_bars()
        tf_logging.enable_progress_bar()
    else:
        hf_utils.disable_progress_bars()
        tf_logging.disable_progress_bar()


def progress_bars_enabled() -> bool:
    """Whether bakesteer shows progress bars."""
    return _enabled


def bar(iterable: Iterable[T], *, desc: str, total: int | None = None, unit: str = "it", **kwargs: Any) -> Iterator[T]:
    """Wrap ``iterable`` in a tqdm bar that honours :func:`set_progress_bars`."""
    return iter(tqdm(iterable, desc=desc, total=total, unit=unit, disable=not _enabled, leave=False, **kwargs))
