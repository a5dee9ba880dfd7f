"""The degeneration gate: long generations checked for failures that first-token KL and short samples miss.

A few eval prompts are also answered at length (``--long-prompts``, default 4, ``--long-tokens``, default 512 tokens)
and each answer is checked for three failures:

- ``loop``: the answer ends in a span repeated back to back (a periodic tail of at least :data:`MIN_LOOP_CHARS`
  characters that holds its period at least :data:`MIN_LOOP_REPEATS` times). A loop cut off by the token limit mid-
  repetition is still periodic, so it is still found.
- ``unclosed_think``: a ``<think>`` with no ``</think>`` after it.
- ``script``: the answer's last third is mostly in another Unicode script (Latin, Cyrillic, CJK, ...) than the prompt.

A run's ``degenerate`` record is ``{rate, reasons, examples, flagged}``: the share of long answers with at least one
failure, how many of each, the first of them, and whether the run counts as degenerate. The base model's own long
answers can loop (small models do), so a steered run is *flagged* only when its rate is at least
:data:`FLAG_MIN_RATE` and above the base's rate.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Any

#: A loop must cover at least this many characters of the answer's tail ...
MIN_LOOP_CHARS = 48
#: ... and hold its period at least this many times.
MIN_LOOP_REPEATS = 3
#: Longest period (characters) searched for.
MAX_PERIOD = 400
#: A run is flagged when at least this share of its long answers fail, and more than the base's.
FLAG_MIN_RATE = 0.5
#: Examples kept per run.
EXAMPLES = 2
#: Characters of a failing answer kept in an example (its end, where the failure shows).
EXAMPLE_CHARS = 300
REASONS = ("loop", "unclosed_think", "script")


def loop_span(text: str) -> str | None:
    """The repeated span the text ends in, or ``None``.

    For each period ``p`` (shortest first), the periodic tail is the longest suffix in which every character equals
    the one ``p`` before it, plus ``p``; a loop is a tail of at least ``max(MIN_LOOP_REPEATS * p, MIN_LOOP_CHARS)``
    characters. Trailing whitespace is ignored.
    """
    text = text.rstrip()
    n = len(text)
    for period in range(1, min(MAX_PERIOD, n // MIN_LOOP_REPEATS) + 1):
        need = max(MIN_LOOP_REPEATS * period, MIN_LOOP_CHARS)
        if need > n:
            break
        run = 0
        i = n - 1
        while i - period >= 0 and text[i] == text[i - period]:
            run += 1
            i -= 1
            if run + period >= need:
                return text[n - period :]
    return None


def unclosed_think(text: str) -> bool:
    """Whether a ``<think>`` is never closed after it."""
    opened = text.rfind("<think>")
    return opened >= 0 and text.find("</think>", opened) < 0


def script_of(char: str) -> str | None:
    """The Unicode script of a letter, from its name's first word (``LATIN``, ``CYRILLIC``, ``CJK``, ...); ``None``
    for anything that is not a letter."""
    if not char.isalpha():
        return None
    name = unicodedata.name(char, "")
    if not name:
        return None
    word = name.split()[0]
    return "CJK" if word in ("CJK", "HIRAGANA", "KATAKANA") else word


def dominant_script(text: str) -> str | None:
    """The script most of the text's letters are in (``None`` without letters)."""
    counts = Counter(s for s in map(script_of, text) if s)
    return counts.most_common(1)[0][0] if counts else None


def script_change(prompt: str, text: str) -> tuple[str, str] | None:
    """``(prompt's script, tail's script)`` when the answer's last third is mostly in another script than the
    prompt; ``None`` otherwise (or when either has no letters)."""
    expected = dominant_script(prompt)
    tail = dominant_script(text[len(text) * 2 // 3 :])
    if expected and tail and tail != expected:
        return expected, tail
    return None


@dataclass(frozen=True)
class Finding:
    """What the detector found in one long answer."""

    prompt: str
    text: str
    reasons: tuple[str, ...]
    detail: str

    def example(self) -> dict[str, Any]:
        tail = self.text[-EXAMPLE_CHARS:]
        return {"prompt": self.prompt, "reasons": list(self.reasons), "detail": self.detail, "tail": tail}


def check(prompt: str, text: str) -> Finding:
    """Check one long answer to ``prompt`` for every failure of :data:`REASONS`."""
    reasons: list[str] = []
    details: list[str] = []
    span = loop_span(text)
    if span is not None:
        reasons.append("loop")
        details.append(f"ends repeating {span[:60]!r}")
    if unclosed_think(text):
        reasons.append("unclosed_think")
        details.append("<think> never closed")
    change = script_change(prompt, text)
    if change:
        reasons.append("script")
        details.append(f"prompt in {change[0]}, tail in {change[1]}")
    return Finding(prompt, text, tuple(reasons), "; ".join(details))


def summarize(prompts: list[str] | tuple[str, ...], texts: list[str]) -> dict[str, Any]:
    """The ``degenerate`` record of a run's long answers (``flagged`` is set by :func:`flag` against the base)."""
    findings = [check(p, t) for p, t in zip(prompts, texts, strict=True)]
    failing = [f for f in findings if f.reasons]
    counts = Counter(r for f in failing for r in f.reasons)
    return {
        "rate": len(failing) / len(findings) if findings else 0.0,
        "answers": len(findings),
        "reasons": {r: counts.get(r, 0) for r in REASONS},
        "examples": [f.example() for f in failing[:EXAMPLES]],
        "flagged": False,
    }


def flag(run: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """``run`` with ``flagged`` set: its rate is at least :data:`FLAG_MIN_RATE` and above ``base``'s."""
    flagged = run["answers"] > 0 and run["rate"] >= FLAG_MIN_RATE and run["rate"] > base["rate"]
    return {**run, "flagged": bool(flagged)}


def rule() -> dict[str, Any]:
    """The gate's rule, as recorded beside the results."""
    return {
        "reasons": list(REASONS),
        "min_loop_chars": MIN_LOOP_CHARS,
        "min_loop_repeats": MIN_LOOP_REPEATS,
        "flag_min_rate": FLAG_MIN_RATE,
        "text": (
            f"a run is degenerate when at least {FLAG_MIN_RATE:g} of its long answers loop, leave a <think> open or "
            "switch script, and more of them than the base's"
        ),
    }
