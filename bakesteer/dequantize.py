"""GGUF sources: a plain safetensors copy that the pipeline treats like any other source.

transformers keeps GGUF weights packed behind its own kernels (no ``save_pretrained``, no dtype casts), so bakesteer
dequantizes once into a scratch directory and works on that copy.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import torch

from bakesteer.configfiles import CONFIG_FILE, edit_json, portable_updates, tokenizer_class_for_4
from bakesteer.placement import Placement, load_model
from bakesteer.source import ModelSource
from bakesteer.writer import save_state_dict, save_tokenizer


def materialize_gguf(source: ModelSource, dtype: torch.dtype, directory: Path) -> ModelSource:
    """Dequantize a GGUF file with transformers' loader and save it as a plain safetensors model in ``directory``.

    transformers keeps GGUF weights packed behind its own kernels (no ``save_pretrained``, no dtype casts), so the
    pipeline works on this plain copy instead: it loads with plain transformers like any other source. The copy
    is written in ``dtype``, rounded once from the float32 dequantized values.

    Returns:
        A source of the same kind, model id and revision whose files are in ``directory``.
    """
    model, tokenizer = load_model(source, torch.float32, Placement(torch.device("cpu")))
    state = {key: (t.to(dtype) if t.is_floating_point() else t) for key, t in model.state_dict().items()}
    files, index = save_state_dict(state, directory)
    config = copy.deepcopy(model.config)
    config.dtype = dtype
    config.architectures = [type(model).__name__]  # a config parsed from GGUF has none
    # The loader records the GGUF as a quantization method; the copy is plain, full-precision weights.
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.save_pretrained(directory)
    # the pipeline edits this config.json as a source's own: it must read alike in transformers 4 and 5
    raw = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
    edit_json(directory / CONFIG_FILE, portable_updates(raw, always=True))
    model.generation_config.save_pretrained(directory)
    save_tokenizer(tokenizer, directory)
    tokenizer_class_for_4(directory)
    del model, state
    return dataclasses.replace(source, directory=directory, gguf_file=None, weight_files=files, index_file=index)
