"""The degeneration detector on texts written for the test: a loop, an unclosed <think>, a script switch, and clean
text that must pass; and the flag against the base's own rate."""

from __future__ import annotations

import pytest

from bakesteer.degeneration import (
    FLAG_MIN_RATE,
    MIN_LOOP_CHARS,
    check,
    flag,
    loop_span,
    script_change,
    summarize,
    unclosed_think,
)

CLEAN = (
    "A rainy Monday morning starts slowly. The streets shine under grey light, buses hiss through puddles, and "
    "people hold their coffee a little closer than usual. By nine the rain softens, and the city settles into its "
    "week with the quiet patience of a place that has seen many Mondays like this one."
)
PROMPT = "Describe a rainy Monday morning."


def test_clean_text_passes() -> None:
    finding = check(PROMPT, CLEAN)
    assert finding.reasons == () and finding.detail == ""
    # an answer that is merely short, or lists things, is not a loop
    assert loop_span("Yes.") is None and loop_span("1. apples\n2. pears\n3. plums\n4. figs\n5. dates\n6. limes") is None


def test_a_loop_is_found_even_when_cut_mid_repetition() -> None:
    looping = CLEAN + " I love the rain. I love the rain. I love the rain. I love the rain. I love the ra"
    assert loop_span(looping) is not None
    assert check(PROMPT, looping).reasons == ("loop",)
    assert loop_span("word " * 30) == " word"  # the shortest period, as the (stripped) text ends
    assert loop_span(CLEAN + "!" * (MIN_LOOP_CHARS - 1)) is None  # a periodic tail too short to count
    assert loop_span(CLEAN + "!" * MIN_LOOP_CHARS) == "!"
    # a long span repeated three times is a loop; twice is not
    span = "The rain falls on the roofs of the old town and nobody minds it at all. "
    assert loop_span(CLEAN + " " + span * 3) is not None and loop_span(CLEAN + " " + span * 2) is None


def test_an_unclosed_think_is_found() -> None:
    assert unclosed_think("<think>Let me consider the weather, and then") is True
    assert unclosed_think("<think>short</think> The answer.") is False
    assert unclosed_think("<think>a</think> then <think>b") is True
    assert check(PROMPT, "<think>" + CLEAN).reasons == ("unclosed_think",)


def test_a_change_of_script_is_found() -> None:
    switched = CLEAN[:200] + " 雨の月曜日の朝は静かで、街は灰色の光に包まれています。人々はコーヒーを持っています。"
    assert script_change(PROMPT, switched) == ("LATIN", "CJK")
    assert check(PROMPT, switched).reasons == ("script",)
    cyrillic = "Расскажи о дождливом утре понедельника."
    assert script_change(cyrillic, "Дождливое утро понедельника начинается медленно.") is None
    assert script_change(PROMPT, "Дождливое утро понедельника начинается медленно.") == ("LATIN", "CYRILLIC")
    assert script_change(PROMPT, "12345 !!!") is None  # no letters: nothing to compare


def test_a_run_is_flagged_against_the_base() -> None:
    texts = [CLEAN, "<think>" + CLEAN, CLEAN + " ok." * 40, CLEAN]
    record = summarize([PROMPT] * 4, texts)
    assert record["rate"] == 0.5 and record["answers"] == 4
    assert record["reasons"] == {"loop": 1, "unclosed_think": 1, "script": 0}
    assert [e["reasons"] for e in record["examples"]] == [["unclosed_think"], ["loop"]]
    assert record["examples"][1]["tail"].endswith("ok. ok.")
    base_clean = summarize([PROMPT] * 4, [CLEAN] * 4)
    assert flag(record, base_clean)["flagged"] is True and record["rate"] >= FLAG_MIN_RATE
    assert flag(record, record)["flagged"] is False  # the base loops as much: steering did not cause it
    quarter = summarize([PROMPT] * 4, [CLEAN, CLEAN, CLEAN, "<think>"])
    assert quarter["rate"] == pytest.approx(0.25) and flag(quarter, base_clean)["flagged"] is False
