"""The one definition of every conversion option.

:class:`ConvertOptions` is a frozen dataclass; each field's ``metadata`` carries its CLI help and flag, so the click
options (``bakesteer.cli``), the library keywords (``convert(..., options)``), ``bakesteer.json`` and (later) the
model card all come from this single list and cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from bakesteer.errors import OptionError

DTYPES = ("auto", "float32", "bfloat16", "float16")
#: ``--device-map`` values: accelerate's strategies, and ``cpu`` (everything in CPU memory, through accelerate).
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential", "cpu")
#: ``bakesteer export --outtype``: the types llama.cpp's converter writes that bakesteer offers.
GGUF_OUTTYPES = ("f32", "f16", "bf16", "q8_0")
DEFAULT_LAYERS = "0.4:0.9"
#: ``--alpha auto``: sweep a grid on the side given by ``--direction`` and keep the strongest k within the limits
#: of :mod:`bakesteer.sweep`.
AUTO = "auto"
DIRECTIONS = ("positive", "negative")
#: Options that do not shape the output directory, so ``bakesteer.json`` does not record them.
NOT_RECORDED = (
    "overwrite",
    "push_to_hub",
    "private",
    "push_branch",
    "commit_message",
    "force_push",
    # where the weights lived while converting: the output is bit-identical either way (tested)
    "device_map",
    "max_memory",
    "offload_folder",
    # how the judge is driven (its address is recorded as scheme, host and port only; never a key)
    "judge_concurrency",
    "judge_timeout",
    "allow_degenerate",
)


def _opt(default: Any, help: str, *, group: str, flag: str | None = None, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, "group": group, "flag": flag, **extra})


@dataclass(frozen=True)
class ConvertOptions:
    """Every option of a conversion.

    Groups: ``calibration`` (what the vector depends on), ``bake``, ``validation``, ``runtime``, ``publish``.

    Construct it with keywords; :meth:`check` validates what can be validated without the model.
    """

    alpha: float | str = _opt(
        1.0,
        "Steering strength k: the offset at layer l is k * mu_l / sqrt(d_model) * c_l. k > 0 pushes towards the "
        "positive set (default: refusal), k < 0 away; around |k| = 3 models collapse. 'auto' sweeps a grid on the "
        "side of --direction and keeps the strongest k whose fluency and repetition stay within limits.",
        group="bake",
        alpha=True,
    )
    direction: str = _opt(
        "positive",
        "With --alpha auto: the side of the grid, towards the positive set (k > 0) or away from it (k < 0).",
        group="bake",
        choices=DIRECTIONS,
    )
    layers: str = _opt(
        DEFAULT_LAYERS,
        "Layers to steer: fractions of depth 'START:END' (end excluded, rounded half up) or 0-based indices "
        "'FIRST-LAST' (inclusive) or a single index.",
        group="bake",
    )
    positive: Path | str | None = _opt(
        None,
        "Positive prompt set: .txt (one per line), .jsonl (prompt/text/instruction), .csv (a header), .parquet "
        "(FILE.parquet#COLUMN) or a Hub dataset hf://datasets/OWNER/NAME[@REV][:CONFIG][/SPLIT]#COLUMN (pinned to its "
        "commit). Default: the shipped harmful requests.",
        group="calibration",
        path=True,
        prompts=True,
    )
    negative: Path | str | None = _opt(
        None,
        "Negative prompt set, same forms. Default: the shipped harmless requests.",
        group="calibration",
        path=True,
        prompts=True,
    )
    chat_template: bool = _opt(
        True,
        "Apply the tokenizer's chat template (with the generation prompt) to every prompt, when it has one.",
        group="calibration",
        flag="--chat-template/--no-chat-template",
    )
    vector: Path | None = _opt(
        None,
        "Reuse a saved steering.safetensors (from `bakesteer vector` or an earlier convert): no calibration.",
        group="bake",
        path=True,
    )
    allow_remote_code: bool = _opt(
        False,
        "For families with no exact bias site (Gemma2/3, OLMo2, Mixtral, Qwen2/3-MoE): write a checkpoint with its own "
        "model_type and a small modeling file, loaded with trust_remote_code=True.",
        group="bake",
    )
    revision: str | None = _opt(None, "Hub revision (branch, tag or commit) of MODEL.", group="runtime")
    dtype: str = _opt(
        "auto",
        "Output and compute dtype: auto keeps the checkpoint's (float32 for GGUF, which is dequantized).",
        group="runtime",
        choices=DTYPES,
    )
    device: str = _opt(
        "cpu", "Torch device for calibration and validation (cpu, cuda, cuda:1, mps, auto).", group="runtime"
    )
    device_map: str | None = _opt(
        None,
        "Let accelerate place the model: auto, balanced, balanced_low_0, sequential or cpu (layers over the GPUs, "
        "then CPU memory, then disk). Without it the model is loaded whole onto --device.",
        group="runtime",
        choices=DEVICE_MAPS,
    )
    max_memory: str | None = _opt(
        None,
        "Memory per device for --device-map, e.g. 0=70GiB,1=70GiB,cpu=200GiB; what fits nowhere is offloaded to "
        "disk. Implies --device-map auto.",
        group="runtime",
    )
    offload_folder: Path | None = _opt(
        None,
        "Where --device-map offloads layers to disk (default: a scratch folder beside the output, deleted after). "
        "Implies --device-map auto.",
        group="runtime",
        path=True,
        directory=True,
    )
    batch_size: int = _opt(8, "Prompts per forward pass. Results do not depend on it.", group="runtime")
    seed: int = _opt(0, "Seed for torch (recorded; the method itself is deterministic).", group="runtime")
    probes: int = _opt(
        8, "Held-out prompts used to validate the baked checkpoint (half from each set).", group="validation"
    )
    greedy_tokens: int = _opt(32, "Tokens of greedy continuation compared during validation.", group="validation")
    overwrite: bool = _opt(False, "Replace an existing, non-empty output directory.", group="runtime")
    eval_prompts: Path | str | None = _opt(
        None,
        "Neutral prompts answered when measuring a model (same forms as --positive). Default: the 64 shipped "
        "neutral instructions.",
        group="measure",
        path=True,
        prompts=True,
    )
    max_new_tokens: int = _opt(64, "Greedy tokens generated per prompt when measuring a model.", group="measure")
    generation_batch_size: int = _opt(
        64, "Prompts per batch when generating completions to measure a model.", group="measure"
    )
    baseline_prompt: str | None = _opt(
        None,
        "Also measure the unsteered base with this system prompt (text, or a file holding it): a 'prompted base' row "
        "beside k = 0 and the steered ones, with every metric and the judge.",
        group="measure",
    )
    long_prompts: int = _opt(
        4,
        "Eval prompts also answered at length and checked for degeneration (loops, an unclosed <think>, a change of "
        "script); 0 turns the check off.",
        group="measure",
    )
    long_tokens: int = _opt(512, "Greedy tokens of each long answer.", group="measure")
    judge: str | None = _opt(
        None,
        "An LLM judge: an OpenAI-compatible server's URL (http://..., key in BAKESTEER_JUDGE_API_KEY) or a local "
        "chat model (Hub id, directory or .gguf), loaded after the measured model is freed.",
        group="judge",
    )
    judge_model: str | None = _opt(
        None, "The model the judge server serves (default: the first of its /v1/models).", group="judge"
    )
    rubric: str = _opt(
        "refusal",
        "What the judge rates: refusal (does the answer refuse; held-out positive and negative prompts), concept "
        "(AxBench concept, instruction and fluency 0-2, harmonic mean; needs --concept), or a template file.",
        group="judge",
    )
    concept: str | None = _opt(
        None, "With --rubric concept: the concept in words, e.g. 'joy and enthusiasm'.", group="judge"
    )
    judge_concurrency: int = _opt(8, "Judge requests in flight at once (server judges).", group="judge")
    judge_timeout: float = _opt(
        60.0, "Seconds a judge request may take before it is retried (4 retries, with backoff).", group="judge"
    )
    eval: bool = _opt(
        False,
        "After validation, measure the written checkpoint against its base (KL, perplexity, fluency, repetition, "
        "concept, refusals) and put a 'Measured effect' section into the card.",
        group="evaluate",
    )
    push_to_hub: str | None = _opt(
        None, "After a validated conversion, push the output to this OWNER/NAME (one commit).", group="publish"
    )
    private: bool = _opt(False, "Create the Hub repository private.", group="publish")
    push_branch: str | None = _opt(None, "Branch to push to (default main).", group="publish")
    commit_message: str | None = _opt(None, "Commit message for the push.", group="publish")
    force_push: bool = _opt(
        False,
        "Convert and push even when the target already holds an output with the same fingerprint.",
        group="publish",
    )
    allow_degenerate: bool = _opt(
        False,
        "Push a variant even when the degeneration gate flags it (measured with --eval).",
        group="publish",
    )

    # ------------------------------------------------------------------ helpers

    @classmethod
    def field(cls, name: str) -> dataclasses.Field[Any]:
        """The dataclass field called ``name``."""
        return next(f for f in dataclasses.fields(cls) if f.name == name)

    @classmethod
    def fields_in(cls, *groups: str) -> list[dataclasses.Field[Any]]:
        """The dataclass fields that belong to any of ``groups`` (all fields when none are given)."""
        return [f for f in dataclasses.fields(cls) if not groups or f.metadata["group"] in groups]

    def replace(self, **changes: Any) -> ConvertOptions:
        """A copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)

    @property
    def auto(self) -> bool:
        """Whether ``alpha`` is ``auto`` (chosen by a sweep)."""
        return self.alpha == AUTO

    def record(self) -> dict[str, Any]:
        """The options as ``bakesteer.json`` records them: :meth:`to_dict` without those that do not shape the
        output (``overwrite`` and where it is pushed), so that the same conversion gives the same bytes."""
        return {k: v for k, v in self.to_dict().items() if k not in NOT_RECORDED}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every option; paths are reduced to their file names (no local paths leak)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = Path(value).name if isinstance(value, Path) else value
        from bakesteer.source import is_path

        for name in ("judge", "rubric"):  # a server by scheme, host and port; a local file by its name
            value = out[name]
            if isinstance(value, str) and is_url(value):
                out[name] = public_url(value)
            elif isinstance(value, str) and is_path(value):
                out[name] = Path(value).name
        return out

    def check(self) -> None:
        """Validate what can be validated without a model.

        Raises:
            OptionError: for a non-finite alpha, a malformed band, an unknown dtype or a non-positive count.
        """
        if self.alpha != AUTO and (
            isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not math.isfinite(self.alpha)
        ):
            raise OptionError(
                "--alpha", self.alpha, reason="must be a finite number or 'auto'", hint="pass e.g. --alpha 1"
            )
        parse_layers(self.layers, None)
        if self.dtype not in DTYPES:
            raise OptionError("--dtype", self.dtype, reason="unknown dtype", hint=f"use one of {', '.join(DTYPES)}")
        if self.direction not in DIRECTIONS:
            raise OptionError(
                "--direction", self.direction, reason="unknown side", hint=f"use one of {', '.join(DIRECTIONS)}"
            )
        if self.device_map is not None and self.device_map not in DEVICE_MAPS:
            raise OptionError(
                "--device-map",
                self.device_map,
                reason="unknown device map",
                hint=f"use one of {', '.join(DEVICE_MAPS)}",
            )
        if self.max_memory is not None:
            from bakesteer.placement import check_max_memory

            check_max_memory(self.max_memory)
        if self.push_to_hub is not None:
            check_repo_id(self.push_to_hub, "--push-to-hub")
        if self.judge_concurrency < 1 or not self.judge_timeout > 0:
            raise OptionError(
                "--judge-concurrency/--judge-timeout",
                (self.judge_concurrency, self.judge_timeout),
                reason="must be positive",
                hint="pass e.g. --judge-concurrency 8 --judge-timeout 60",
            )
        if self.long_prompts < 0:
            raise OptionError("--long-prompts", self.long_prompts, reason="must be 0 or more", hint="pass 4, or 0")
        if self.rubric == "concept" and not self.concept:
            raise OptionError(
                "--rubric", self.rubric, reason="the concept rubric needs --concept", hint='pass --concept "joy"'
            )
        for name in ("batch_size", "probes", "greedy_tokens", "max_new_tokens", "generation_batch_size", "long_tokens"):
            if int(getattr(self, name)) < 1:
                flag = "--" + name.replace("_", "-")
                raise OptionError(flag, getattr(self, name), reason="must be at least 1", hint=f"pass {flag} 1 or more")
        if self.probes < 2:
            raise OptionError(
                "--probes", self.probes, reason="needs one prompt from each set", hint="pass --probes 2 or more"
            )


def is_url(spec: str) -> bool:
    """Whether ``--judge`` names a server (``http://`` or ``https://``) rather than a local model."""
    return spec.startswith(("http://", "https://"))


def public_url(url: str) -> str:
    """The server's scheme, host and port only: no credentials, path or query (for messages and records)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


def check_repo_id(repo_id: str, option: str) -> None:
    """A Hub repository id as the Hub accepts it (``owner/name``, no ``..`` or ``--``, at most 96 characters).

    Raises:
        OptionError: it is malformed (the Hub client's own validation, named).
    """
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        reason = str(err).splitlines()[0].split(f": '{repo_id}'")[0].rstrip(".")
        raise OptionError(option, repo_id, reason=reason, hint="use OWNER/NAME, e.g. my-org/smollm2-steered") from None


def _round_half_up(x: Fraction) -> int:
    return math.floor(x + Fraction(1, 2))


def parse_layers(spec: str, num_layers: int | None) -> tuple[int, int]:
    """Parse a band specification into a half-open range ``[start, end)`` of 0-based layer indices.

    ``"0.4:0.9"`` means ``round(0.4 L) <= l < round(0.9 L)`` with exact rational arithmetic and rounding half up
    (so 0.9 * 30 is exactly 27, not 26.999...). ``"12-26"`` is inclusive; ``"5"`` is one layer.

    Args:
        spec: The band, as given to ``--layers``.
        num_layers: Depth of the model; ``None`` checks only the syntax.

    Returns:
        ``(start, end)`` with ``0 <= start < end <= num_layers``.

    Raises:
        OptionError: malformed, empty or out of range.
    """
    hint = "use fractions like --layers 0.4:0.9 or inclusive indices like --layers 12-26"
    text = str(spec).strip()
    if ":" in text:
        lo_s, hi_s = text.split(":", 1)
        try:
            lo, hi = Fraction(lo_s.strip()), Fraction(hi_s.strip())
        except (ValueError, ZeroDivisionError):
            raise OptionError("--layers", spec, reason="cannot parse", hint=hint) from None
        if not (0 <= lo < hi <= 1):
            raise OptionError("--layers", spec, reason="fractions must satisfy 0 <= start < end <= 1", hint=hint)
        if num_layers is None:
            return (0, 1)
        start, end = _round_half_up(lo * num_layers), _round_half_up(hi * num_layers)
        if start >= end:
            raise OptionError("--layers", spec, reason=f"selects no layer of a {num_layers}-layer model", hint=hint)
        return (start, end)
    try:
        if "-" in text.lstrip("-"):
            first_s, last_s = text.split("-", 1)
            first, last = int(first_s), int(last_s)
        else:
            first = last = int(text)
    except ValueError:
        raise OptionError("--layers", spec, reason="cannot parse", hint=hint) from None
    if first < 0 or last < first:
        raise OptionError("--layers", spec, reason="indices must satisfy 0 <= first <= last", hint=hint)
    if num_layers is not None and last >= num_layers:
        raise OptionError(
            "--layers",
            spec,
            reason=f"layer {last} is out of range for a {num_layers}-layer model (0-{num_layers - 1})",
            hint=hint,
        )
    return (first, last + 1)


def check_alpha_for_model(alpha: float, d_model: int) -> None:
    """Refuse an alpha whose offset would be as large as the residual stream itself.

    The offset's norm relative to the mean residual norm is ``|k| / sqrt(d_model)``; at 1 the steering replaces
    the signal rather than nudging it (models already collapse near k = 3).

    Raises:
        OptionError: when ``|alpha| >= sqrt(d_model)``.
    """
    limit = math.sqrt(d_model)
    if abs(alpha) >= limit:
        raise OptionError(
            "--alpha",
            alpha,
            reason=f"|alpha| >= sqrt(d_model) = {limit:.3g}: the offset would be as large as the residual stream",
            hint="models collapse near |alpha| = 3; pass a value like --alpha 1",
        )
