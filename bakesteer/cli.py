"""The command line: parse, call the library, print what :mod:`bakesteer.display` formats.

Every command is declared with :func:`command`, which adds ``--quiet``/``--debug``, sets up logging, builds the
:class:`~bakesteer.options.ConvertOptions` from the flags, and runs the whole body inside the one error boundary
(:func:`_run`): a report the body writes is written inside it too. Heavy imports (torch, transformers) happen
inside the commands so ``bakesteer --help`` is instant.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import re
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from bakesteer import display
from bakesteer.errors import INTERRUPTED_STATE, BakesteerError
from bakesteer.options import AUTO, GGUF_OUTTYPES, ConvertOptions
from bakesteer.record import write_json
from bakesteer.version import __version__

F = typing.TypeVar("F", bound=Callable[..., Any])


class AlphaType(click.ParamType):
    """A number, or ``auto``."""

    name = "K|auto"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float | str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if str(value).strip().lower() == AUTO:
            return AUTO
        try:
            return float(value)
        except ValueError:
            self.fail(f"{value!r} is neither a number nor 'auto'", param, ctx)


class FloatList(click.ParamType):
    """Comma-separated numbers: ``-1,-0.5,0,0.5,1``."""

    name = "K,K,..."

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[float, ...]:
        if isinstance(value, tuple):
            return value
        try:
            return tuple(float(part) for part in str(value).split(",") if part.strip())
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of numbers", param, ctx)


class PromptSourceType(click.ParamType):
    """A prompt file, or a Hub dataset ``hf://datasets/...`` (kept as text: a path would fold its ``//``)."""

    name = "FILE|hf://datasets/..."

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Path | str:
        from bakesteer.prompt_sources import is_hub_dataset

        if isinstance(value, Path) or is_hub_dataset(value):
            return value  # type: ignore[no-any-return]
        return Path(value)


def _click_option(f: dataclasses.Field[Any]) -> Callable[[F], F]:
    meta = f.metadata
    flag = meta.get("flag") or "--" + f.name.replace("_", "-")
    kind = typing.get_type_hints(ConvertOptions)[f.name]
    kwargs: dict[str, Any] = {"default": f.default, "show_default": True, "help": meta["help"]}
    if meta.get("alpha"):
        kwargs["type"] = AlphaType()
    elif meta.get("choices"):
        kwargs["type"] = click.Choice(meta["choices"])
    elif meta.get("prompts"):
        kwargs["type"] = PromptSourceType()
        kwargs["show_default"] = False
    elif meta.get("path"):
        folder = bool(meta.get("directory"))
        kwargs["type"] = click.Path(path_type=Path, dir_okay=folder, file_okay=not folder)
        kwargs["show_default"] = False
    elif kind is bool and "/" not in flag:
        kwargs["is_flag"] = True
    elif kind in (int, float):
        kwargs["type"] = kind
    return click.option(flag, f.name, **kwargs)


def options_from(*groups: str, only: tuple[str, ...] = ()) -> Callable[[F], F]:
    """Add one click option per :class:`ConvertOptions` field in ``groups`` (only the fields named in ``only``, when
    given): the dataclass is the only definition."""

    def decorate(command: F) -> F:
        for f in reversed(ConvertOptions.fields_in(*groups)):
            if not only or f.name in only:
                command = _click_option(f)(command)
        return command

    return decorate


def _common_flags(command: F) -> F:
    command = click.option("--quiet", "-q", is_flag=True, help="No progress bars and no summary, only errors.")(command)
    command = click.option("--debug", is_flag=True, help="Show full tracebacks and debug logs.")(command)
    return command


#: Which :class:`ConvertOptions` fields a command takes: ``{group: None (all of it) or the field names}``.
OptionGroups = dict[str, tuple[str, ...] | None]


def command(
    *params: Callable[[F], F], options: OptionGroups | None = None, name: str | None = None, epilog: str | None = None
) -> Callable[[F], Any]:
    """Declare a ``bakesteer`` subcommand.

    The body is called with its own parameters, ``quiet``, and (when ``options`` is given) ``options``: the
    :class:`ConvertOptions` built from those flags. It runs inside the error boundary; whatever it returns is
    ignored, and ``sys.exit`` inside it passes through.

    Args:
        params: click decorators for the command's own arguments and options, top to bottom.
        options: The :class:`ConvertOptions` groups (and fields) the command exposes as flags.
        name: The command's name (default: the function's).
        epilog: Text after the options in ``--help``.
    """

    def decorate(body: F) -> Any:
        @functools.wraps(body)
        def run(quiet: bool, debug: bool, **values: Any) -> None:
            _setup(quiet, debug)
            names = {f.name for f in dataclasses.fields(ConvertOptions)}
            kwargs = {k: v for k, v in values.items() if options is None or k not in names}
            if options is not None:
                kwargs["options"] = ConvertOptions(**{k: v for k, v in values.items() if k in names})
            _run(debug, lambda: body(quiet=quiet, **kwargs))

        cmd: Any = _common_flags(run)
        for group, only in reversed(list((options or {}).items())):
            cmd = options_from(group, only=only or ())(cmd)
        for param in reversed(params):
            cmd = param(cmd)
        return main.command(name=name, epilog=epilog)(cmd)

    return decorate


def _setup(quiet: bool, debug: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not os.environ.get("HF_HUB_VERBOSITY"):
        # the Hub client warns on every retry; bakesteer reports the outcome in one line (--debug shows them all)
        from huggingface_hub.utils import logging as hub_logging

        hub_logging.set_verbosity(logging.DEBUG if debug else logging.ERROR)
    if quiet:
        from bakesteer.progress import set_progress_bars

        set_progress_bars(False)


class Terminated(KeyboardInterrupt):
    """SIGTERM (``timeout``, CI cancellation, ``docker stop``), raised where the program is so that the same clean-up
    as for Ctrl-C runs (staging and scratch directories removed, the previous output untouched)."""


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated()


_STAGING = re.compile(r"\.([^/\s]+?)\.bakesteer-[0-9a-f]{8}\.(?:partial|scratch|old)")


def _public(text: str) -> str:
    """A message with the hidden staging and scratch names replaced by the output's own name."""
    return _STAGING.sub(r"\1", text)


def _run(debug: bool, action: Callable[[], Any]) -> Any:
    """The one error boundary: known errors become one line and their exit code; --debug shows the traceback.
    SIGINT exits 130 and SIGTERM 143, each after the clean-up."""
    import signal

    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return action()
    except KeyboardInterrupt as err:
        # where the run stood: a stage that has something to say sets it (see bakesteer.errors.interrupted_state)
        state = getattr(err, INTERRUPTED_STATE, None) or "nothing was written"
        if isinstance(err, Terminated):
            click.echo(f"bakesteer: terminated (SIGTERM); {_public(state)}", err=True)
            sys.exit(143)
        click.echo(f"bakesteer: interrupted; {_public(state)}", err=True)
        sys.exit(130)
    except BakesteerError as err:
        if debug:
            raise
        click.echo(f"bakesteer: error: {_public(err.one_line())}", err=True)
        sys.exit(err.exit_code)
    except Exception as err:  # an unexpected failure: still one line, the traceback on request
        if debug:
            raise
        message = _public(str(err).splitlines()[0]) if str(err) else ""
        click.echo(
            f"bakesteer: error: unexpected {type(err).__name__}: {message} (rerun with --debug for the traceback)",
            err=True,
        )
        sys.exit(1)
    finally:
        signal.signal(signal.SIGTERM, previous)


class _OneLineGroup(click.Group):
    """Usage errors (a bad flag, a value of the wrong kind, a path of the wrong type) as one line, like every other
    error: ``bakesteer: error: <click's message>; see `bakesteer CMD --help```, exit 2."""

    def main(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        parse: Any = super().main  # click types main() by overloads on standalone_mode
        if not kwargs.pop("standalone_mode", True):
            return parse(*args, standalone_mode=False, **kwargs)
        try:
            value = parse(*args, standalone_mode=False, **kwargs)
        except click.UsageError as err:
            where = " ".join(["bakesteer", *(err.ctx.command_path.split()[1:] if err.ctx is not None else [])])
            click.echo(f"bakesteer: error: {err.format_message()}; see `{where} --help`", err=True)
            sys.exit(err.exit_code)
        except click.Abort:
            click.echo("bakesteer: interrupted; nothing was written", err=True)
            sys.exit(130)
        sys.exit(value if isinstance(value, int) else 0)


@click.group(cls=_OneLineGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bakesteer")
def main() -> None:
    """Bake norm-calibrated activation steering into ordinary Hugging Face checkpoints."""


_OUTPUT_DIR = click.option(
    "--output", "-o", type=click.Path(path_type=Path, file_okay=False), required=True, help="Output directory."
)
_ALL_GROUPS: OptionGroups = dict.fromkeys(
    ("bake", "calibration", "validation", "runtime", "measure", "evaluate", "judge", "publish")
)


@command(
    click.argument("model"),
    _OUTPUT_DIR,
    click.option(
        "--report",
        type=click.Path(path_type=Path, dir_okay=False),
        help="Write what the run cost and where it ran (timings, machine, validation, push) as JSON to this file; "
        "none of it goes into the output, so identical conversions give identical bytes.",
    ),
    options=_ALL_GROUPS,
)
def convert(model: str, output: Path, report: Path | None, quiet: bool, options: ConvertOptions) -> None:
    """Bake steering into MODEL (Hub id, local directory or .gguf file) and validate the result."""
    from bakesteer.pipeline import convert as run_convert

    if report is not None:
        from bakesteer.writer import check_file_target

        check_file_target(report, "--report")
    result = run_convert(model, output, options)
    if report is not None:
        data = result.report() if result.up_to_date is None else {"up_to_date": True, **result.metadata}
        write_json(report, data, sort_keys=False)
    if quiet:
        return
    if result.up_to_date is not None:
        click.echo(
            display.up_to_date_line(str(options.push_to_hub), options.push_branch, result.metadata["fingerprint"])
        )
        return
    click.echo(display.convert_summary(result, output))
    for block in display.convert_extras(result):
        click.echo(block)
    if result.push is not None:
        click.echo(display.push_summary(result.push))


@command(
    click.argument("model"),
    click.option(
        "--output",
        "-o",
        type=click.Path(path_type=Path, dir_okay=False),
        required=True,
        help="Where to save the vector (steering.safetensors format).",
    ),
    options={"calibration": None, "runtime": None},
)
def vector(model: str, output: Path, quiet: bool, options: ConvertOptions) -> None:
    """Calibrate MODEL and save only the steering vector, for `convert --vector` runs with many alphas."""
    from bakesteer.pipeline import compute_vector

    vec = compute_vector(model, output, options)
    if not quiet:
        click.echo(f"saved a {vec.num_layers}-layer vector (d_model {vec.d_model}) to {output}")


@command(
    click.argument("model"),
    _OUTPUT_DIR,
    click.option(
        "--alphas",
        type=FloatList(),
        default=",".join(f"{a:g}" for a in (-1, -0.5, 0, 0.5, 1)),
        show_default=True,
        help="The k values to measure (use --alphas=-1,... so the leading minus is not read as a flag).",
    ),
    click.option(
        "--modes",
        default="broadcast,last-token",
        show_default=True,
        help="Steering modes: broadcast (every position, what baking does), last-token (the last prompt position "
        "and each generated token; cannot be baked).",
    ),
    options={"bake": ("layers", "vector"), "calibration": None, "runtime": None, "measure": None, "judge": None},
)
def sweep(
    model: str, output: Path, alphas: tuple[float, ...], modes: str, quiet: bool, options: ConvertOptions
) -> None:
    """Measure MODEL steered by hooks at several k and modes: KL, perplexity, fluency, repetition, concept score,
    refusals. One load, one calibration; writes sweep.json, sweep.csv and plots into OUTPUT, no checkpoint."""
    from bakesteer.sweep import sweep as run_sweep

    mode_list = [m.strip() for m in modes.split(",") if m.strip()]
    result = run_sweep(model, output, options, alphas=alphas, modes=mode_list)
    if not quiet:
        click.echo(display.sweep_summary(model, result, output))


@command(
    click.argument("directory", type=click.Path(path_type=Path, file_okay=False)),
    click.option("--base", help="The base model (default: the Hub id and commit the checkpoint records)."),
    click.option(
        "--output",
        "-o",
        type=click.Path(path_type=Path, dir_okay=False),
        help="Write the full report (metrics and every completion) as JSON to this file.",
    ),
    options={
        "calibration": ("positive", "negative"),
        "runtime": ("dtype", "device", "device_map", "max_memory", "offload_folder", "batch_size"),
        "measure": None,
        "judge": None,
    },
    name="eval",
)
def eval_(directory: Path, base: str | None, output: Path | None, quiet: bool, options: ConvertOptions) -> None:
    """Measure a bakesteer output DIRECTORY, loaded plainly, side by side with its base model."""
    from bakesteer.evaluate import evaluate

    report = evaluate(directory, base=base, options=options)
    if output is not None:
        from bakesteer.writer import check_output

        check_output(Path(output).absolute(), overwrite=False)
        write_json(Path(output), report.to_dict())
    if not quiet:
        click.echo(display.metrics_table(display.eval_rows(report.metrics, report.alpha)))
        for line in display.degenerate_lines([(f"k={report.alpha:g}", report.metrics["model"])]):
            click.echo(line)


@command(
    click.argument("directory", type=click.Path(path_type=Path, file_okay=False)),
    click.argument("repo_id"),
    click.option("--private", is_flag=True, help="Create the repository private."),
    click.option("--branch", "--revision", "branch", help="Branch to push to (default main)."),
    click.option("--commit-message", help="Commit message."),
    click.option("--force", is_flag=True, help="Push even if the output did not pass validation."),
)
def push(
    directory: Path,
    repo_id: str,
    private: bool,
    branch: str | None,
    commit_message: str | None,
    force: bool,
    quiet: bool,
) -> None:
    """Push a bakesteer output DIRECTORY to the Hub as REPO_ID (OWNER/NAME), in one commit."""
    from bakesteer.errors import interrupted_state
    from bakesteer.hub import push as run_push

    try:
        result = run_push(
            directory, repo_id, private=private, branch=branch, commit_message=commit_message, force=force
        )
    except KeyboardInterrupt as err:
        interrupted_state(err, f"the push did not finish and {repo_id} is unchanged (a commit is all or nothing)")
        raise
    if not quiet:
        click.echo(display.push_summary(result))


#: Exit status of ``publish`` when at least one variant failed (the others were still published).
EXIT_SOME_FAILED = 4
#: ... and when every variant that failed was refused by the degeneration gate (as ``convert --push-to-hub``).
EXIT_DEGENERATE = 3

_PUBLISH_EPILOG = """\b
Variants file (TOML; YAML with the same keys also works):
  [defaults]                  # any convert option by its Python name
  dtype = "bfloat16"
  [[prompt_sets]]             # optional; default one set "refusal"
  name = "refusal"            # positive/negative: files, relative to this file
  [[models]]
  model = "OWNER/NAME"        # or a directory or .gguf file
  alphas = [-1, 0.5, 1, "auto"]
  repo = "my-org/{model}-{prompt_set}-k{alpha}"
  branch = "main"             # optional, may use the same placeholders
  # revision, prompt_sets = [...], and per-model convert options

\b
Exit status: 0 when every variant is published or up to date, 2 for a bad file or token, 4 when some variant failed.
"""


@command(
    click.argument("variants_file", type=click.Path(path_type=Path, dir_okay=False)),
    click.option("--dry-run", is_flag=True, help="Resolve sources and read the targets; list what would be published."),
    click.option(
        "--report",
        type=click.Path(path_type=Path, dir_okay=False),
        help="Write every variant's outcome as JSON to this file (also when some fail).",
    ),
    click.option(
        "--work-dir",
        type=click.Path(path_type=Path, file_okay=False),
        help="Where outputs are converted before their push (default: the system temporary directory).",
    ),
    click.option(
        "--keep-outputs",
        type=click.Path(path_type=Path, file_okay=False),
        help="Keep each converted output in this directory instead of deleting it after the push.",
    ),
    click.option(
        "--plan-json",
        is_flag=True,
        help="A dry run that prints a GitHub Actions matrix on stdout, one entry per model and prompt set with "
        'something to publish ({"include": [{"id", "model", "prompt_set", "source", "cache_key", "targets"}]}); '
        "other output goes to stderr.",
    ),
    click.option("--group", help="Only this calibration group (an id from --plan-json): one CI job per group."),
    epilog=_PUBLISH_EPILOG,
)
def publish(
    variants_file: Path,
    dry_run: bool,
    report: Path | None,
    work_dir: Path | None,
    keep_outputs: Path | None,
    plan_json: bool,
    group: str | None,
    quiet: bool,
) -> None:
    """Publish every steered variant of VARIANTS_FILE (models x alphas x prompt sets) that is not already on the Hub.

    Each variant is fingerprinted before anything is converted and skipped when its target already holds that
    fingerprint. Each model is calibrated once per prompt set; every alpha reuses that vector. One commit per
    variant; a failed variant is reported and the others still publish.
    """
    from bakesteer.errors import interrupted_state
    from bakesteer.publish import PublishReport, plan_matrix
    from bakesteer.publish import publish as run_publish

    finished = PublishReport(dry_run=dry_run or plan_json)
    show = _show_outcome(finished, report, quiet=quiet, to_stderr=plan_json)
    if report is not None:
        from bakesteer.writer import check_file_target

        check_file_target(report, "--report")
    try:
        result = run_publish(
            variants_file,
            dry_run=dry_run or plan_json,
            work_dir=work_dir,
            keep_outputs=keep_outputs,
            on_outcome=show,
            group=group,
        )
    except KeyboardInterrupt as err:
        recorded = f"; they are recorded in {report}" if report is not None else ""
        interrupted_state(err, f"{len(finished.outcomes)} variant(s) had finished{recorded}")
        raise
    if report is not None:
        result.write(report)
    if plan_json:
        click.echo(json.dumps(plan_matrix(result), separators=(",", ":")))
    if not quiet:
        click.echo(display.publish_totals(result), err=plan_json)
    if result.failed:
        refused = all(o.degenerate for o in result.outcomes if o.status == "failed")
        sys.exit(EXIT_DEGENERATE if refused else EXIT_SOME_FAILED)


def _show_outcome(finished: Any, report: Path | None, *, quiet: bool, to_stderr: bool) -> Callable[[Any], None]:
    """Each variant's outcome as it is known: added to the report on disk (an interrupt or a kill loses none) and
    printed (failures always, on stderr)."""

    def show(outcome: Any) -> None:
        finished.outcomes.append(outcome)
        if report is not None:
            finished.write(report)
        if not quiet or outcome.status == "failed":
            click.echo(display.outcome_line(outcome), err=to_stderr or outcome.status == "failed")

    return show


@command(
    click.argument("source", type=click.Path(path_type=Path)),
    click.option(
        "--control-vector",
        type=click.Path(path_type=Path, dir_okay=False),
        help="Write the offsets as a llama.cpp control vector (GGUF, direction.N added to the output of block N); "
        "it applies to any quantization of the base: llama-cli -m BASE.gguf --control-vector FILE.",
    ),
    click.option(
        "--gguf",
        "gguf_file",
        type=click.Path(path_type=Path, dir_okay=False),
        help="Convert the baked checkpoint to GGUF with llama.cpp's own convert_hf_to_gguf.py (Llama-layout outputs).",
    ),
    click.option("--alpha", type=float, help="With --control-vector: another k (required for a steering.safetensors)."),
    click.option("--layers", help="With --control-vector: another band, as convert --layers (required for a file)."),
    click.option("--outtype", default="f32", show_default=True, type=click.Choice(GGUF_OUTTYPES)),
    click.option(
        "--llama-cpp",
        type=click.Path(path_type=Path, file_okay=False),
        help="A llama.cpp tree (or an unpacked llama-cpp-python sdist) holding convert_hf_to_gguf.py; default "
        "$BAKESTEER_LLAMA_CPP, then .cache/llama.cpp (`make llama-cpp`).",
    ),
    click.option("--overwrite", is_flag=True, help="Replace existing output files."),
)
def export(
    source: Path,
    control_vector: Path | None,
    gguf_file: Path | None,
    alpha: float | None,
    layers: str | None,
    outtype: str,
    llama_cpp: Path | None,
    overwrite: bool,
    quiet: bool,
) -> None:
    """Export SOURCE (a convert output directory, or a steering.safetensors) for llama.cpp."""
    from bakesteer import export as run
    from bakesteer.errors import OptionError

    if control_vector is None and gguf_file is None:
        raise OptionError("export", str(source), reason="nothing to write", hint="pass --control-vector and/or --gguf")
    if gguf_file is not None and (alpha is not None or layers is not None):
        raise OptionError(
            "--alpha/--layers", f"{alpha}/{layers}", reason="a GGUF checkpoint carries the bake as written",
            hint="convert again for another k or band, or export a --control-vector",
        )  # fmt: skip
    done: list[Any] = []
    if control_vector is not None:
        done.append(run.export_control_vector(source, control_vector, alpha=alpha, layers=layers, overwrite=overwrite))
    if gguf_file is not None:
        done.append(run.export_gguf(source, gguf_file, outtype=outtype, llama_cpp=llama_cpp, overwrite=overwrite))
    if not quiet:
        for item in done:
            click.echo(display.export_line(item))


@command(
    click.argument("directory", type=click.Path(path_type=Path, file_okay=False)),
    click.option(
        "--output",
        "-o",
        type=click.Path(path_type=Path, file_okay=False),
        required=True,
        help="Where to write the base.",
    ),
    click.option("--overwrite", is_flag=True, help="Replace an existing non-empty output directory."),
)
def unbake(directory: Path, output: Path, overwrite: bool, quiet: bool) -> None:
    """Write the base of a bakesteer output DIRECTORY back into OUTPUT: its shards linked, the biases dropped, the
    config restored. It loads plainly and equals the base tensor for tensor."""
    from bakesteer.unbake import unbake as run_unbake

    final = run_unbake(directory, output, overwrite=overwrite)
    if not quiet:
        click.echo(f"wrote the base of {directory.name} to {final}")


@command(
    click.argument("model"),
    click.option("--base", help="Its base: the offsets are the difference of the two checkpoints' MLP output biases."),
    click.option(
        "--vector",
        type=click.Path(path_type=Path, dir_okay=False),
        help="A steering.safetensors: report each offset's cosine with its direction c_l.",
    ),
)
def audit(model: str, base: str | None, vector: Path | None, quiet: bool) -> None:
    """Find steering in MODEL (any checkpoint): per block, the MLP output offset's norm, its dose |v|/mu, the cosine
    with the previous block's and (with --vector) with c_l; or "no steering found"."""
    from bakesteer.audit import audit as run_audit

    report = run_audit(model, base=base, vector=vector)
    click.echo("\n".join(report.lines()))


#: Exit status of ``verify`` when the output is not its base plus the stated offsets (as a failed validation).
EXIT_NOT_VERIFIED = 3


@command(
    click.argument("target"),
    click.option(
        "--base",
        help="The base, when it is not the recorded Hub revision: a directory, a .gguf file or OWNER/NAME[@REVISION].",
    ),
    click.option(
        "--report", type=click.Path(path_type=Path, dir_okay=False), help="Write the comparison as JSON to this file."
    ),
)
def verify(target: str, base: str | None, report: Path | None, quiet: bool) -> None:
    """Prove that TARGET (an output directory, or OWNER/NAME on the Hub) is exactly its base plus the offsets its
    bakesteer.json states, and nothing else. Exit 0 when it is, 3 naming every difference."""
    from bakesteer.verify import verify as run_verify

    if report is not None:
        from bakesteer.writer import check_file_target

        check_file_target(report, "--report")
    result = run_verify(target, base=base)
    if report is not None:
        write_json(report, result.to_dict(), sort_keys=False)
    for difference in result.differences:
        click.echo(f"  {difference}", err=True)
    click.echo(result.verdict(), err=not result.ok)
    if not result.ok:
        sys.exit(EXIT_NOT_VERIFIED)
    if not quiet and result.downloaded_bytes:
        click.echo(f"  downloaded {result.downloaded_bytes / 2**20:.2f} MiB in {result.seconds:.1f} s")


@command(
    click.option(
        "--output",
        "-o",
        type=click.Path(path_type=Path, file_okay=False),
        default=Path("demo-output"),
        show_default=True,
        help="Output directory.",
    ),
    click.option(
        "--alpha",
        type=float,
        default=0.5,
        show_default=True,
        help="Steering strength k (0.5: where the measured sentiment sweep keeps the text fluent).",
    ),
    click.option("--overwrite", is_flag=True, help="Replace an existing output directory."),
)
def demo(output: Path, alpha: float, overwrite: bool, quiet: bool) -> None:
    """Bake a joyful-vs-gloomy direction into the embedded SmolLM2-135M-Instruct (offline), then show base and baked
    answers to neutral requests, each with its measured concept score."""
    from bakesteer.demo import run_demo

    result = run_demo(output, alpha=alpha, overwrite=overwrite)
    if not quiet:
        click.echo(display.convert_summary(result.conversion, output))
    click.echo(display.demo_report(result))


if __name__ == "__main__":
    main()
