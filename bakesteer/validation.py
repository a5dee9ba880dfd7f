"""Validation: the baked checkpoint, reloaded from disk with plain transformers, must match the hooked model.

Reference outputs are computed on the source model with steering hooks *before* it is freed; the written directory
is then reloaded with ``AutoModelForCausalLM.from_pretrained`` (no bakesteer code involved) and compared. Only one
model is ever in memory.

Tolerances: in float32 the relative logit difference ``max|baked - hooked| / max|hooked|`` must be at most 1e-4.
In bf16/fp16 no fixed constant is meaningful, so the bound comes from a floor measured in the same run: the hooked
model in low precision against the same hooked model in float32. Both the baked and the hooked low-precision models
are about one floor away from the float32 truth, so by the triangle inequality they may differ by up to two floors.
The float32 pass runs one unit (decoder block, embedding, head) in float32 at a time (:func:`float32_units`): the
floor costs one forward pass, not a float32 copy of the model.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from bakesteer.architectures import ArchitectureSpec
from bakesteer.batching import Batch, left_padded_batches
from bakesteer.configfiles import CONFIG_FILE, reader_mismatches
from bakesteer.errors import ValidationError
from bakesteer.hooks import decoder_layers, steering
from bakesteer.placement import Placement, input_device, load_causal_lm
from bakesteer.progress import bar

logger = logging.getLogger(__name__)

FP32_TOLERANCE = 1e-4
FLOOR_FACTOR = 2.0
#: The floor and the unhooked base are measured on the first probes only: one of each set, each with its greedy
#: continuation (about a third of the positions), so that float32 costs about one low-precision pass even where it runs
#: 3x slower. Measured on the first two or on all eight probes, the floor differed by less than 20% (README).
CHECK_PROBES = 2


#: Reference logits larger than this go to a scratch file instead of the heap (read back one probe at a time).
SPILL_BYTES = 16 * 1024**2


class LogitStore:
    """The ``[tokens, vocab]`` float32 logits of concatenated probes, written and read one probe at a time.

    Small stores are one tensor; from ``spill_bytes`` on they are an unlinked temporary file in ``folder``, so a
    large reference (many probes, a 150k vocabulary) sits in the page cache, not in the process's memory, while the
    source model is swapped for the written checkpoint.
    """

    def __init__(
        self, lengths: list[int], vocab: int, *, folder: Path | None = None, spill_bytes: int = SPILL_BYTES
    ) -> None:
        self.lengths = list(lengths)
        self.vocab = vocab
        self.starts = _offsets_of_lengths(self.lengths)
        size = self.starts[-1] * vocab * 4
        self._file: Any = None
        self._tensor: torch.Tensor | None = None
        if size >= spill_bytes:
            import tempfile

            self._file = tempfile.TemporaryFile(dir=folder, prefix=".bakesteer-logits-")
            self._file.truncate(size)
        else:
            self._tensor = torch.empty(self.starts[-1], vocab, dtype=torch.float32)

    @property
    def spilled(self) -> bool:
        """Whether the logits live in a file."""
        return self._file is not None

    @property
    def positions(self) -> int:
        return self.starts[-1]

    def put(self, index: int, rows: torch.Tensor) -> None:
        """Store probe ``index``'s ``[length, vocab]`` float32 logits."""
        if self._tensor is not None:
            self._tensor[self.starts[index] : self.starts[index + 1]] = rows
            return
        self._file.seek(self.starts[index] * self.vocab * 4)
        self._file.write(rows.contiguous().numpy().tobytes())

    def get(self, index: int) -> torch.Tensor:
        """Probe ``index``'s logits."""
        if self._tensor is not None:
            return self._tensor[self.starts[index] : self.starts[index + 1]]
        count = self.lengths[index] * self.vocab
        self._file.seek(self.starts[index] * self.vocab * 4)
        data = bytearray(self._file.read(count * 4))
        return torch.frombuffer(data, dtype=torch.float32).view(self.lengths[index], self.vocab)

    def close(self) -> None:
        """Release the file (or tensor)."""
        if self._file is not None:
            self._file.close()
        self._file, self._tensor = None, None


@dataclass
class Outputs:
    """A model's outputs on the probes: every real token's logits (in a :class:`LogitStore`), each probe's
    last-token logits and max |logit|."""

    store: LogitStore
    last: torch.Tensor
    max_abs: float

    @property
    def positions(self) -> int:
        return self.store.positions


@dataclass
class Reference:
    """What the baked checkpoint is compared with.

    Only the hooked logits are kept at every position (spilled to a file when large); the rest is reduced as soon
    as it is measured.

    Attributes:
        probes: The probes as compared: the first two followed by their hooked greedy continuation.
        prompt_lengths: The first two probes' lengths without it.
        greedy: The hooked model's greedy continuations of the first two probes (KV cache, plain argmax).
        hooked: The source model with steering hooks, in the output dtype, on ``probes``.
        base_last: The unhooked source model's logits at the last token of each of the first :data:`CHECK_PROBES`
            probes (a no-op bake must not pass).
        floor: ``max|hooked - hooked in float32| / max|hooked in float32|`` (``None`` when the output is float32).
        dtype: The output dtype.
    """

    probes: list[list[int]]
    prompt_lengths: list[int]
    greedy: list[list[int]]
    hooked: Outputs
    base_last: torch.Tensor
    floor: float | None
    dtype: torch.dtype

    def close(self) -> None:
        self.hooked.store.close()


@dataclass
class ValidationReport:
    """Every number validation measured. ``passed`` is true only when all checks passed."""

    dtype: str
    probes: int
    positions: int
    tolerance: float
    tolerance_basis: str
    floor_relative: float | None
    max_abs_logit: float
    max_abs_diff: float
    relative_diff: float
    mean_kl: float
    greedy_tokens: int
    greedy_equal: bool
    greedy_first_mismatch: int | None
    base_relative_diff: float
    hooked_vs_base_relative_diff: float
    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)
    passed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _batches_logits(
    model: Any, probes: list[list[int]], *, batch_size: int, pad_id: int, desc: str, **forward: Any
) -> Iterator[tuple[Batch, torch.Tensor]]:
    device = input_device(model)
    total = -(-len(probes) // batch_size)
    for batch in bar(left_padded_batches(probes, batch_size, pad_id), desc=desc, total=total, unit="batch"):
        batch = batch.to(device)
        logits = model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            use_cache=False,
            **forward,
        ).logits
        yield batch, logits


@torch.no_grad()
def last_token_logits(model: Any, probes: list[list[int]], *, batch_size: int, pad_id: int, desc: str) -> torch.Tensor:
    """Logits at each probe's last token only (``logits_to_keep=1``: no ``[tokens, vocab]`` tensor is built)."""
    vocab = int(model.get_output_embeddings().weight.shape[0])
    out = torch.empty(len(probes), vocab, dtype=torch.float32)
    for batch, logits in _batches_logits(
        model, probes, batch_size=batch_size, pad_id=pad_id, desc=desc, logits_to_keep=1
    ):
        out[batch.indices] = logits[:, -1].float().cpu()  # left padding: the last position is the last real token
    return out


#: The most float32 logits one forward pass of :func:`stream_logits` may produce: the batch shrinks to fit (a 150k
#: vocabulary makes a batch of 8 probes of 100 tokens 480 MB, more than a small model's weights).
LOGITS_BATCH_BYTES = 32 * 1024**2


@torch.no_grad()
def stream_logits(
    model: Any, probes: list[list[int]], *, batch_size: int, pad_id: int, desc: str
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(probe index, float32 CPU logits at its real tokens)``, one probe at a time, batch by batch.

    Batches hold at most ``batch_size`` probes, fewer when their logits would exceed :data:`LOGITS_BATCH_BYTES`.
    """
    vocab = int(model.get_output_embeddings().weight.shape[0])
    longest = max((len(p) for p in probes), default=1)
    batch_size = max(1, min(batch_size, LOGITS_BATCH_BYTES // (4 * vocab * longest)))
    for batch, logits in _batches_logits(model, probes, batch_size=batch_size, pad_id=pad_id, desc=desc):
        for row, index in enumerate(batch.indices):
            yield index, logits[row][batch.attention_mask[row].bool()].float().cpu()


@torch.no_grad()
def greedy_continuations(model: Any, probes: list[list[int]], *, pad_id: int, tokens: int) -> list[list[int]]:
    """``tokens`` greedily decoded tokens after each probe: plain argmax with a KV cache, one batch.

    Written out rather than ``generate()``: no logits processor of the checkpoint's generation config (a repetition
    penalty, EOS suppression) can apply, so a continuation is exactly the argmax at each step and a model can be
    checked against it with one teacher-forced pass (:func:`greedy_agreement`).
    """
    device = input_device(model)
    # transformers 5.x renamed past_key_values to cache (the old name warns from 5.2x and goes in 5.40)
    cache_kw = "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"
    (batch,) = left_padded_batches(probes, len(probes), pad_id)
    batch = batch.to(device)
    mask, position = batch.attention_mask, batch.position_ids[:, -1:]
    out = model(
        input_ids=batch.input_ids,
        attention_mask=mask,
        position_ids=batch.position_ids,
        use_cache=True,
        logits_to_keep=1,
    )
    steps = [out.logits[:, -1].argmax(-1)]
    for _ in range(tokens - 1):
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        position = position + 1
        out = model(
            input_ids=steps[-1][:, None],
            attention_mask=mask,
            position_ids=position,
            use_cache=True,
            **{cache_kw: out[cache_kw]},
        )
        steps.append(out.logits[:, -1].argmax(-1))
    generated = torch.stack(steps, dim=1).cpu()
    return [generated[row].tolist() for row in torch.argsort(torch.as_tensor(batch.indices)).tolist()]


def greedy_agreement(rows: torch.Tensor, prompt_length: int, continuation: list[int]) -> list[int]:
    """The argmax continuation a model predicts, teacher-forced on ``continuation`` (``rows`` are its logits over
    the probe followed by the continuation): equal to ``continuation`` exactly when its own greedy decoding would
    produce it."""
    return rows[prompt_length - 1 : prompt_length - 1 + len(continuation)].argmax(-1).tolist()


def _offsets_of_lengths(lengths: list[int]) -> list[int]:
    starts = [0]
    for length in lengths:
        starts.append(starts[-1] + length)
    return starts


def _outputs(
    model: Any,
    probes: list[list[int]],
    *,
    batch_size: int,
    pad_id: int,
    desc: str,
    folder: Path | None,
    spill_bytes: int,
) -> Outputs:
    vocab = int(model.get_output_embeddings().weight.shape[0])
    store = LogitStore([len(p) for p in probes], vocab, folder=folder, spill_bytes=spill_bytes)
    last = torch.empty(len(probes), vocab, dtype=torch.float32)
    max_abs = 0.0
    for index, rows in stream_logits(model, probes, batch_size=batch_size, pad_id=pad_id, desc=desc):
        store.put(index, rows)
        last[index] = rows[-1]
        max_abs = max(max_abs, float(rows.abs().max()))
    return Outputs(store, last, max_abs)


@dataclass
class Comparison:
    """Streamed comparison of a model's logits with reference logits."""

    max_abs_diff: float
    max_abs: float
    kl_sum: float
    last: torch.Tensor
    greedy: dict[int, list[int]] = field(default_factory=dict)


def compare_logits(
    stream: Iterator[tuple[int, torch.Tensor]],
    reference: LogitStore,
    teacher: dict[int, tuple[int, list[int]]] | None = None,
) -> Comparison:
    """Max |difference|, summed KL(reference || stream) and each probe's last-token logits, one probe at a time
    (neither model's logits are ever all in memory).

    Args:
        teacher: ``{probe: (prompt length, continuation)}``: also read the greedy continuation the streamed model
            predicts for these probes (see :func:`greedy_agreement`).
    """
    max_diff, max_abs, kl_sum = 0.0, 0.0, 0.0
    last = torch.empty(len(reference.lengths), reference.vocab, dtype=torch.float32)
    greedy: dict[int, list[int]] = {}
    for index, rows in stream:
        if teacher and index in teacher:
            greedy[index] = greedy_agreement(rows, *teacher[index])
        ref = reference.get(index)
        max_diff = max(max_diff, float((rows - ref).abs().max()))
        max_abs = max(max_abs, float(rows.abs().max()))
        kl_sum += kl_total(ref, rows)
        last[index] = rows[-1]
    return Comparison(max_diff, max_abs, kl_sum, last, greedy)


@contextmanager
def float32_units(model: nn.Module, spec: ArchitectureSpec) -> Iterator[None]:
    """Run ``model`` in float32 one unit at a time, with no float32 copy of the whole model.

    The units are the decoder blocks and every module outside them that holds parameters (final norm, ...). A unit's
    low-precision parameters are cast to float32 just before its forward pass and back just after (a float32 copy of
    a bf16/fp16 value casts back exactly), so at most one unit is in float32 at a time and the activations flow in
    float32. Float32 buffers and parameters are left alone. Under an accelerate device map the cast applies to the
    ``meta`` placeholders of offloaded weights, which accelerate then fills in float32 from the stored values.

    The two largest matrices are never cast whole: a plain input embedding returns its looked-up rows in float32 (a
    lookup commutes with the cast), and a plain linear LM head computes its float32 logits in slices of the
    vocabulary of at most :data:`HEAD_SLICE_BYTES` each.
    """
    layers = decoder_layers(model, spec)
    inside = {id(m) for m in layers.modules()}
    model_: Any = model
    embedding, head = model_.get_input_embeddings(), model_.get_output_embeddings()
    plain_embedding = type(embedding) is nn.Embedding and embedding.weight.dtype != torch.float32
    plain_head = type(head) is nn.Linear and head.weight.dtype != torch.float32
    special = {id(m) for m, plain in ((embedding, plain_embedding), (head, plain_head)) if plain}
    units = list(layers) + [
        m
        for m in model.modules()
        if id(m) not in inside and id(m) not in special and next(m.parameters(recurse=False), None) is not None
    ]
    # the low-precision parameters of each unit, by name: accelerate replaces offloaded parameter objects (and
    # unties shared ones) on every call, so the dtype to restore is remembered per name, once, up front
    low = {
        id(unit): {name: p.dtype for name, p in unit.named_parameters() if p.dtype in (torch.bfloat16, torch.float16)}
        for unit in units
    }

    stored: dict[int, dict[str, torch.Tensor]] = {}

    def up(module: nn.Module, args: Any) -> None:
        kept = stored.setdefault(id(module), {})
        for name in low[id(module)]:
            param = module.get_parameter(name)
            if param.dtype != torch.float32:
                kept[name] = param.data  # put back as it was: no new copy, the same (possibly mapped) storage
                param.data = param.data.float()

    def down(module: nn.Module, args: Any, output: Any) -> None:
        kept = stored.pop(id(module), {})
        for name, dtype in low[id(module)].items():
            param = module.get_parameter(name)
            if param.dtype != dtype:
                param.data = kept[name] if name in kept and kept[name].dtype == dtype else param.data.to(dtype)

    def embed_float(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        return output.float()

    handles = []
    patched: tuple[nn.Module, str, Any] | None = None
    _clear_tied_weight_caches(model)
    try:
        for unit in units:
            handles.append(unit.register_forward_pre_hook(up))
            handles.append(unit.register_forward_hook(down))
        if plain_embedding:
            handles.append(embedding.register_forward_hook(embed_float))
        if plain_head:
            # accelerate wraps a dispatched module's forward and calls _old_forward once the weights are in place
            name = "_old_forward" if "_old_forward" in head.__dict__ else "forward"
            patched = (head, name, head.__dict__.get(name))
            setattr(head, name, partial(_sliced_float_linear, head))
        yield
    finally:
        for handle in handles:
            handle.remove()
        if patched is not None:
            module, name, previous = patched
            if previous is None:
                delattr(module, name)
            else:
                setattr(module, name, previous)
        for unit in units:  # a forward that raised inside a unit leaves it cast up
            down(unit, None, None)
        _clear_tied_weight_caches(model)


#: The most float32 weight the LM head is cast at once while measuring the floor.
HEAD_SLICE_BYTES = 64 * 1024**2


def _sliced_float_linear(module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` in float32, casting ``HEAD_SLICE_BYTES`` of the weight at a time."""
    weight, bias = module.weight, module.bias
    rows = max(1, HEAD_SLICE_BYTES // (4 * weight.shape[1]))
    x = x.float()
    out = torch.empty(*x.shape[:-1], weight.shape[0], dtype=torch.float32, device=x.device)
    for start in range(0, weight.shape[0], rows):
        part = None if bias is None else bias[start : start + rows].float()
        out[..., start : start + rows] = F.linear(x, weight[start : start + rows].float(), part)
    return out


def _clear_tied_weight_caches(model: nn.Module) -> None:
    """Empty accelerate's per-device cache of offloaded tied weights (an embedding shared with the LM head).

    The cache keeps the tensor that one hook loaded for the other to reuse, in the dtype it was loaded in; across a
    change of dtype it would hand a float32 copy to a bf16 pass or the reverse. Emptied, it refills from the stored
    weights in the parameters' current dtype.
    """
    for module in model.modules():
        cache = getattr(getattr(module, "_hf_hook", None), "tied_params_map", None)
        if cache:
            for per_device in cache.values():
                per_device.clear()


def reference_outputs(
    model: nn.Module,
    spec: ArchitectureSpec,
    offsets: torch.Tensor,
    probes: list[list[int]],
    *,
    batch_size: int,
    pad_id: int,
    greedy_tokens: int,
    folder: Path | None = None,
    spill_bytes: int = SPILL_BYTES,
) -> Reference:
    """Hooked and unhooked outputs of the source model, plus the float32 floor of a low-precision model.

    The hooked model first decodes ``greedy_tokens`` after the first two probes (KV cache); those two are then
    compared with their continuation appended, so the written checkpoint's greedy agreement is read from its one
    teacher-forced pass instead of a second decoding. Then one hooked pass over every probe (every position's
    logits), and over the first :data:`CHECK_PROBES` only: an unhooked pass (last-token logits, for the no-op check)
    and, for bf16/fp16, a hooked pass with :func:`float32_units` (the floor). Nothing is computed that validation does
    not compare or report.

    Args:
        folder: Where large reference logits spill to (see :class:`LogitStore`).
    """
    dtype = next(model.parameters()).dtype
    kwargs = {"batch_size": batch_size, "pad_id": pad_id}
    with steering(model, spec, offsets):
        greedy = greedy_continuations(model, probes[:2], pad_id=pad_id, tokens=greedy_tokens)
        extended = [p + g for p, g in zip(probes, greedy, strict=False)] + probes[2:]
        hooked = _outputs(model, extended, desc="reference (hooked)", folder=folder, spill_bytes=spill_bytes, **kwargs)
    base_last = last_token_logits(model, extended[:CHECK_PROBES], desc="reference (base)", **kwargs)
    floor = None
    if dtype != torch.float32:
        with steering(model, spec, offsets), float32_units(model, spec):
            stream = stream_logits(model, extended[:CHECK_PROBES], desc="reference (float32)", **kwargs)
            exact = compare_logits(stream, hooked.store)
        floor = exact.max_abs_diff / exact.max_abs
    return Reference(extended, [len(p) for p in probes[:2]], greedy, hooked, base_last, floor, dtype)


def relative_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max|a - b| / max|b|``."""
    return float((a - b).abs().max() / b.abs().max())


def kl_total(p_logits: torch.Tensor, q_logits: torch.Tensor, *, chunk: int = 16) -> float:
    """Sum over positions of KL(p || q) between next-token distributions, in float64, ``chunk`` rows at a time."""
    total = 0.0
    for start in range(0, p_logits.shape[0], chunk):
        log_p = torch.log_softmax(p_logits[start : start + chunk].double(), dim=-1)
        log_q = torch.log_softmax(q_logits[start : start + chunk].double(), dim=-1)
        total += float((log_p.exp() * (log_p - log_q)).sum())
    return total


def _first_mismatch(a: list[list[int]], b: list[list[int]]) -> int | None:
    for seq_a, seq_b in zip(a, b, strict=True):
        for step, (x, y) in enumerate(zip(seq_a, seq_b, strict=False)):
            if x != y:
                return step
        if len(seq_a) != len(seq_b):
            return min(len(seq_a), len(seq_b))
    return None


def tolerance_for(reference: Reference) -> tuple[float, str]:
    """The relative logit tolerance and a sentence saying where it comes from."""
    if reference.floor is None:
        return FP32_TOLERANCE, "float32: fixed 1e-4 of max|logit|"
    tolerance = max(FLOOR_FACTOR * reference.floor, FP32_TOLERANCE)
    return tolerance, f"{FLOOR_FACTOR:g} x the floor measured in this run ({reference.floor:.3g})"


def _check_plain_load_refused(directory: Path) -> None:
    """A remote-code checkpoint must fail loudly without trust_remote_code (never load unsteered)."""
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(directory, trust_remote_code=False)
    except ValueError:
        return
    raise ValidationError("config", "the remote-code checkpoint loads without trust_remote_code (unsteered)")


def check_tokenizer(directory: Path, source_tokenizer: Any, texts: list[str], *, chat_template: bool) -> None:
    """The written tokenizer files, loaded plainly, encode ``texts`` (and render their chat turns) exactly as the
    source's tokenizer did.

    Raises:
        ValidationError: a text is encoded differently, or the tokenizer does not load.
    """
    from transformers import AutoTokenizer

    from bakesteer.prompts import render_prompts

    try:
        written = AutoTokenizer.from_pretrained(directory)
    except Exception as err:  # whatever the tokenizer backend raises: reported as a failed check
        raise ValidationError("tokenizer", f"the written tokenizer does not load ({type(err).__name__})") from None
    for templated in (False, True) if chat_template else (False,):
        ours = render_prompts(written, texts, chat_template=templated)
        theirs = render_prompts(source_tokenizer, texts, chat_template=templated)
        for text, a, b in zip(texts, ours, theirs, strict=True):
            if a != b:
                raise ValidationError(
                    "tokenizer", f"the written tokenizer encodes {text[:40]!r} differently from the source's"
                )


def validate_checkpoint(
    directory: Path,
    reference: Reference,
    *,
    expected_keys: set[str],
    config_updates: dict[str, Any] | None = None,
    trust_remote_code: bool = False,
    alpha: float,
    placement: Placement,
    batch_size: int,
    pad_id: int,
    greedy_tokens: int,
) -> ValidationReport:
    """Reload ``directory`` with plain transformers and compare it with ``reference``.

    Raises:
        ValidationError: missing/unexpected keys, a config that does not round-trip (or reloads quantized), a
            bias absent after reload, logits beyond the tolerance, a
            float32 greedy mismatch, or a checkpoint that equals the base although ``alpha != 0``.
    """
    if trust_remote_code:
        _check_plain_load_refused(directory)
    model, info = load_causal_lm(
        directory,
        reference.dtype,
        placement,
        use_safetensors=True,
        output_loading_info=True,
        trust_remote_code=trust_remote_code,
    )
    missing = sorted(info.get("missing_keys", []))
    unexpected = sorted(info.get("unexpected_keys", []))
    mismatched = [str(m) for m in info.get("mismatched_keys", [])]
    state_keys = set(model.state_dict())
    absent = sorted(expected_keys - state_keys)
    config_problems = [
        f"{key}={getattr(model.config, key, None)!r} (wrote {value!r})"
        for key, value in (config_updates or {}).items()
        if getattr(model.config, key, None) != value
    ]
    if getattr(model.config, "quantization_config", None) or getattr(model, "hf_quantizer", None):
        config_problems.append("the reloaded model is quantized")
    # a downloader's transformers 4 reads config.json on its own: its rope, norm and vocabulary fields must be what
    # this reload was validated with
    reader_problems = reader_mismatches(json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8")), model.config)
    teacher = {i: (length, reference.greedy[i]) for i, length in enumerate(reference.prompt_lengths)}
    stream = stream_logits(model, reference.probes, batch_size=batch_size, pad_id=pad_id, desc="validating")
    baked = compare_logits(stream, reference.hooked.store, teacher)
    baked_greedy = [baked.greedy[i] for i in range(len(reference.greedy))]
    del model

    tolerance, basis = tolerance_for(reference)
    hooked = reference.hooked
    diff = baked.max_abs_diff
    scale = hooked.max_abs
    report = ValidationReport(
        dtype=str(reference.dtype).removeprefix("torch."),
        probes=len(reference.probes),
        positions=hooked.positions,
        tolerance=tolerance,
        tolerance_basis=basis,
        floor_relative=reference.floor,
        max_abs_logit=scale,
        max_abs_diff=diff,
        relative_diff=diff / scale,
        mean_kl=baked.kl_sum / hooked.positions,
        greedy_tokens=greedy_tokens,
        greedy_equal=baked_greedy == reference.greedy,
        greedy_first_mismatch=_first_mismatch(baked_greedy, reference.greedy),
        base_relative_diff=relative_diff(baked.last[:CHECK_PROBES], reference.base_last),
        hooked_vs_base_relative_diff=relative_diff(hooked.last[:CHECK_PROBES], reference.base_last),
        missing_keys=missing,
        unexpected_keys=unexpected,
    )
    problems = {"keys": (missing, unexpected, mismatched), "config": config_problems, "readers": reader_problems}
    _judge(report, problems, absent=absent, alpha=alpha, float32=reference.floor is None)
    report.passed = True
    logger.info("validation passed: relative diff %.3g <= %.3g (%s)", report.relative_diff, tolerance, basis)
    return report


def _judge(
    report: ValidationReport, problems: dict[str, Any], *, absent: list[str], alpha: float, float32: bool
) -> None:
    """Raise the first failed check of a reload, with the numbers it compared.

    Raises:
        ValidationError: see :func:`validate_checkpoint`.
    """
    data = report.to_dict()
    missing, unexpected, mismatched = problems["keys"]
    tolerance = report.tolerance
    if missing or unexpected or mismatched:
        raise ValidationError(
            "keys",
            f"plain reload reported missing {missing[:3]}, unexpected {unexpected[:3]}, mismatched {mismatched[:3]}",
            measured=len(missing) + len(unexpected) + len(mismatched),
            bound=0,
            report=data,
        )
    if problems["config"]:
        raise ValidationError("config", "config did not round-trip: " + ", ".join(problems["config"]), report=data)
    if problems["readers"]:
        raise ValidationError(
            "readers",
            "transformers 4 would read config.json as another model: " + "; ".join(problems["readers"]),
            report=data,
        )
    if absent:
        raise ValidationError(
            "bias",
            f"{len(absent)} baked bias(es) absent after reload, e.g. {absent[0]}",
            measured=len(absent),
            bound=0,
            report=data,
        )
    if not math.isfinite(report.relative_diff) or report.relative_diff > tolerance:
        raise ValidationError(
            "logits",
            f"max|logit diff| is {report.relative_diff:.3g} of max|logit|, "
            f"above the tolerance {tolerance:.3g} ({report.tolerance_basis})",
            measured=report.relative_diff,
            bound=tolerance,
            report=data,
        )
    if float32 and not report.greedy_equal:
        raise ValidationError(
            "greedy",
            f"float32 greedy continuation differs at step {report.greedy_first_mismatch}",
            measured=report.greedy_first_mismatch,
            report=data,
        )
    if alpha != 0 and report.base_relative_diff <= tolerance:
        effect = report.hooked_vs_base_relative_diff
        raise ValidationError(
            "no-op",
            f"the baked model equals the base (diff {report.base_relative_diff:.3g}, tolerance {tolerance:.3g}; the "
            f"hooked model differs from the base by {effect:.3g})"
            + ("; the steering is too weak to verify, use a larger --alpha" if effect <= tolerance else ""),
            measured=report.base_relative_diff,
            bound=tolerance,
            report=data,
        )
