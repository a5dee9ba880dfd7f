"""The README's support table, generated from the registry (``python -m bakesteer.architectures.table``)."""

from __future__ import annotations

from bakesteer.architectures.registry import REFUSED, REGISTRY, Strategy

START = "<!-- support-table:start -->"
END = "<!-- support-table:end -->"

_STRATEGY = {
    Strategy.EXISTING_BIAS: "existing bias",
    Strategy.NATIVE_FLAG: "native flag",
    Strategy.REMAP: "remap",
    Strategy.REMOTE_CODE: "remote code (opt-in)",
}


def support_table() -> str:
    """Markdown tables of supported and refused families, between the README markers."""
    rows = [
        "| model_type | strategy | runtimes that apply the offset | how |",
        "| --- | --- | --- | --- |",
    ]
    for name in sorted(REGISTRY):
        spec = REGISTRY[name]
        how = _STRATEGY[spec.strategy]
        if spec.flag:
            how += f" `{spec.flag}`"
        if spec.remap:
            how += f" → `{spec.remap.target}`"
        rows.append(f"| `{name}` | {how} | {', '.join(spec.runtimes)} | {spec.notes} |")
    if REFUSED:
        rows += ["", "Refused, with the reason the error gives:", "", "| model_type | reason | way forward |"]
        rows += ["| --- | --- | --- |"]
        rows += [f"| `{name}` | {REFUSED[name].reason} | {REFUSED[name].way_forward} |" for name in sorted(REFUSED)]
    return "\n".join([START, *rows, END])


if __name__ == "__main__":
    print(support_table())
