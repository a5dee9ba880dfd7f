"""Exports for llama.cpp: the calibrated offsets as a control vector, or the baked checkpoint as GGUF.

**Control vector.** What llama.cpp reads (checked in its source at commit 0c1e570, the one llama-cpp-python 0.3.36
vendors): ``common_control_vector_load_one`` in ``common/common.cpp`` reads no metadata; it takes every tensor named
``direction.N`` (F32, one dimension of ``n_embd``), refuses ``N = 0`` and non-F32 or non-1-D tensors, and puts
``direction.N`` at offset ``n_embd * (N - 1)``. ``llama_adapter_cvec`` (``src/llama-adapter.cpp``) keeps one tensor per
layer ``il`` in ``1 .. n_layer - 1`` (never 0), and each model graph calls ``build_cvec(cur, il)`` right after the
block's second residual add (``l_out`` in ``src/models/llama.cpp``). So ``direction.N`` is added to the output of
0-based block N, exactly where bakesteer's hook adds ``v_N``, for every token, like the baked bias. Block 0 cannot be
addressed. The header is what llama.cpp's own ``cvector-generator`` writes: ``general.architecture = controlvector``,
``controlvector.model_hint`` (the model type) and ``controlvector.layer_count`` (the number of direction tensors).

A control vector applies to any quantization of the base in llama.cpp (``--control-vector FILE``), and also to the
families whose MLP output is normed before the residual add (Gemma 2/3, OLMo 2), where no bias can carry the offset:
their llama.cpp graphs add it after that add too (``src/models/gemma2.cpp``, ``gemma3.cpp``, ``olmo2.cpp``).

**GGUF checkpoint.** ``--gguf`` runs llama.cpp's own ``convert_hf_to_gguf.py`` (with its ``gguf-py``) on the written
checkpoint, for families whose llama.cpp graph loads MLP biases (the registry's ``runtimes``). bakesteer does not ship
or download the converter: pass a llama.cpp tree with ``--llama-cpp DIR`` or ``BAKESTEER_LLAMA_CPP`` (a checkout, or
the ``vendor/llama.cpp`` of the llama-cpp-python sdist on PyPI; ``make llama-cpp`` fetches the pinned one).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from bakesteer.errors import ExportError
from bakesteer.options import GGUF_OUTTYPES, parse_layers
from bakesteer.record import atomic_path, read_output
from bakesteer.vector import SteeringVector

logger = logging.getLogger(__name__)

CONTROL_VECTOR_ARCH = "controlvector"
#: The llama.cpp tree ``make llama-cpp`` fetches: the sdist of llama-cpp-python on PyPI vendors it.
LLAMA_CPP_PYTHON = "0.3.36"
_FETCH_HINT = (
    "get llama.cpp's converter with `make llama-cpp` (the llama-cpp-python "
    f"{LLAMA_CPP_PYTHON} sdist from PyPI, unpacked into .cache/llama.cpp) or a llama.cpp checkout, and pass "
    "--llama-cpp DIR or set BAKESTEER_LLAMA_CPP"
)


@dataclass
class ControlVector:
    """What :func:`export_control_vector` wrote.

    Attributes:
        path: The GGUF file.
        blocks: The 0-based blocks with a ``direction.N`` (N = block).
        alpha: ``k`` of the offsets.
        band: ``(start, end)``, end excluded.
        model_type: The model hint written.
    """

    path: Path
    blocks: list[int]
    alpha: float
    band: tuple[int, int]
    model_type: str


def _offsets(source: Path, alpha: float | None, layers: str | None) -> tuple[torch.Tensor, tuple[int, int], float, str]:
    """The offsets to export, their band and k, and the model type, from an output directory or a vector file."""
    if source.is_dir():
        out = read_output(source)
        vector = SteeringVector.load(out.vector_path)
        band = out.record.band if layers is None else parse_layers(layers, vector.num_layers)
        k = out.record.k if alpha is None else float(alpha)
    else:
        vector = SteeringVector.load(source)  # VectorFileError for anything else
        if alpha is None or layers is None:
            raise ExportError(
                source.name,
                reason="a vector file records no k and no band",
                hint="pass --alpha and --layers (or export the converted output directory)",
            )
        band, k = parse_layers(layers, vector.num_layers), float(alpha)
    return vector.offsets(band, k), band, k, vector.model_type


def export_control_vector(
    source: Path,
    output: Path,
    *,
    alpha: float | None = None,
    layers: str | None = None,
    overwrite: bool = False,
) -> ControlVector:
    """Write the offsets of a bake as a llama.cpp control vector (see the module docstring for the format).

    Args:
        source: A ``bakesteer convert`` output directory (its band and k by default), or a ``steering.safetensors``
            (then ``alpha`` and ``layers`` are required).
        output: The ``.gguf`` file to write.
        alpha: Another k (the offsets are linear in k).
        layers: Another band, as ``--layers``.

    Raises:
        ExportError: not a bakesteer output or vector, a band that starts at block 0, or an existing output.
    """
    import gguf

    source, output = Path(source), Path(output)
    if output.exists() and not overwrite:
        from bakesteer.errors import OutputExistsError

        raise OutputExistsError(output)
    offsets, band, k, model_type = _offsets(source, alpha, layers)
    if band[0] == 0:
        raise ExportError(
            source.name,
            reason="the band starts at block 0, which a llama.cpp control vector cannot address (its loader refuses "
            "direction.0 and keeps no vector for layer 0)",
            hint=(
                f"pass --layers starting at block 1 or later, e.g. --layers 1-{band[1] - 1}"
                if band[1] >= 2
                else "pass a --layers band of blocks 1 or later (this model's band has no block after 0 to keep)"
            ),
        )
    blocks = [block for block in range(*band) if bool(offsets[block].any())]
    with atomic_path(output) as partial:
        writer = gguf.GGUFWriter(str(partial), CONTROL_VECTOR_ARCH)
        writer.add_string(f"{CONTROL_VECTOR_ARCH}.model_hint", model_type)
        writer.add_int32(f"{CONTROL_VECTOR_ARCH}.layer_count", len(blocks))
        for block in blocks:
            writer.add_tensor(f"direction.{block}", offsets[block].to(torch.float32).numpy())
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    logger.info("wrote %s: %d directions, blocks %d-%d, k=%g", output.name, len(blocks), band[0], band[1] - 1, k)
    return ControlVector(output, blocks, k, band, model_type)


def find_converter(llama_cpp: Path | None = None) -> Path:
    """llama.cpp's ``convert_hf_to_gguf.py``: in ``llama_cpp``, ``$BAKESTEER_LLAMA_CPP`` or ``.cache/llama.cpp``.

    Each may be a llama.cpp tree or an unpacked llama-cpp-python sdist (``vendor/llama.cpp`` inside).

    Raises:
        ExportError: none holds the converter with its ``gguf-py``.
    """
    candidates = [Path(p) for p in (llama_cpp, os.environ.get("BAKESTEER_LLAMA_CPP")) if p]
    candidates.append(Path(".cache") / "llama.cpp")
    for root in candidates:
        for tree in (root, root / "vendor" / "llama.cpp"):
            script = tree / "convert_hf_to_gguf.py"
            if script.is_file() and (tree / "gguf-py" / "gguf").is_dir():
                return script
    where = ", ".join(str(c) for c in candidates)
    raise ExportError(
        "--gguf", reason=f"llama.cpp's convert_hf_to_gguf.py was not found (looked in {where})", hint=_FETCH_HINT
    )


def export_gguf(
    source: Path, output: Path, *, outtype: str = "f32", llama_cpp: Path | None = None, overwrite: bool = False
) -> Path:
    """Convert a written checkpoint to GGUF with llama.cpp's own converter (a subprocess; its log on failure).

    Raises:
        ExportError: not a bakesteer output, a family llama.cpp does not run with MLP biases, no converter, or a
            failed conversion.
    """
    source, output = Path(source), Path(output)
    if outtype not in GGUF_OUTTYPES:
        from bakesteer.errors import OptionError

        raise OptionError("--outtype", outtype, reason="unknown type", hint=f"use one of {', '.join(GGUF_OUTTYPES)}")
    if output.exists() and not overwrite:
        from bakesteer.errors import OutputExistsError

        raise OutputExistsError(output)
    record = read_output(source, vector=False).record
    if "llama.cpp" not in record.runtimes:
        raise ExportError(
            source.name,
            reason=f"llama.cpp does not run a {record.model_type} checkpoint with its baked biases",
            hint="export the offsets instead: bakesteer export DIR --control-vector FILE.gguf",
        )
    script = find_converter(llama_cpp)
    import importlib.util

    if importlib.util.find_spec("sentencepiece") is None:
        raise ExportError(
            "--gguf",
            reason="llama.cpp's converter needs the sentencepiece package, which is not installed",
            hint="pip install 'sentencepiece>=0.1.98,<0.3' (the llamacpp extra)",
        )
    with atomic_path(output) as partial:
        command = [sys.executable, str(script), str(source), "--outfile", str(partial), "--outtype", outtype]
        logger.info("running %s", " ".join(command))
        env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}  # the converter's own gguf-py
        proc = subprocess.run(command, capture_output=True, text=True, env=env)
        # logged before the outcome is known, so that --debug shows it when the converter fails
        logger.debug("converter log:\n%s", (proc.stdout + proc.stderr)[-8000:])
        if proc.returncode != 0 or not partial.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise ExportError(
                source.name,
                reason=f"llama.cpp's converter failed (exit {proc.returncode}): {tail[0][:300]}",
                hint="rerun with --debug to see its log",
            )
    return output
