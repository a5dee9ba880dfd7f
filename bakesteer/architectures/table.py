"""The support table of ``docs/architectures.md``, generated from the registry
(``python -m bakesteer.architectures.table`` prints it)."""

from __future__ import annotations

from bakesteer.architectures.readers import oldest_transformers, runs_for, runtime_checks
from bakesteer.architectures.registry import LLAMA_CPP_GRAPHS, LLAMA_CPP_RUN, REFUSED, REGISTRY, Strategy

START = "<!-- support-table:start -->"
END = "<!-- support-table:end -->"

_STRATEGY = {
    Strategy.EXISTING_BIAS: "existing bias",
    Strategy.NATIVE_FLAG: "native flag",
    Strategy.REMAP: "remap",
    Strategy.REMOTE_CODE: "remote code (opt-in)",
}


def control_vector_check(model_type: str) -> str:
    """How the claim that a llama.cpp control vector steers ``model_type`` was checked ("—": no claim)."""
    graph = LLAMA_CPP_GRAPHS.get(model_type)
    if graph is None:
        return "—"
    if model_type in LLAMA_CPP_RUN:
        return "run (slow tier, SmolLM2)"
    return f"read: `src/models/{graph}.cpp`"


def support_table() -> str:
    """Markdown tables of supported and refused families, between the markers of `docs/architectures.md`."""
    rows = [
        "| model_type | strategy | oldest transformers | runtimes that apply the baked offset (how checked) "
        "| other readers run (slow tier) | llama.cpp control vector | how |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in sorted(REGISTRY):
        spec = REGISTRY[name]
        how = _STRATEGY[spec.strategy]
        if spec.flag:
            how += f" `{spec.flag}`"
        if spec.remap:
            how += f" → `{spec.remap.target}`"
        runtimes = "; ".join(f"{runtime} ({check})" for runtime, check in runtime_checks(spec).items())
        oldest = oldest_transformers(spec)
        oldest += " (config reading checked)" if oldest != "5.0" else ""
        ran = ", ".join(f"{run.name} {run.version}" for run in runs_for(spec.model_type)) or "—"
        rows.append(
            f"| `{name}` | {how} | {oldest} | {runtimes} | {ran} | {control_vector_check(name)} | {spec.notes} |"
        )
    if REFUSED:
        rows += ["", "Refused, with the reason the error gives:", "", "| model_type | reason | way forward |"]
        rows += ["| --- | --- | --- |"]
        rows += [f"| `{name}` | {REFUSED[name].reason} | {REFUSED[name].way_forward} |" for name in sorted(REFUSED)]
    return "\n".join([START, *rows, END])


if __name__ == "__main__":
    print(support_table())
