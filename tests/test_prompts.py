import json
from pathlib import Path

import pytest

from bakesteer.errors import PromptSetError
from bakesteer.prompts import MIN_PROMPTS, load_prompt_set, make_prompt_set, render_prompts

PROMPTS = [f"Question number {i} about topic {i * 7 % 13}?" for i in range(20)]


def test_default_sets_are_large_and_alike() -> None:
    pos, neg = load_prompt_set(None, "positive"), load_prompt_set(None, "negative")
    assert pos.name == "default:harmful.txt" and neg.name == "default:harmless.txt"
    assert len(pos.prompts) >= 128 and len(neg.prompts) >= 128
    # similar form and length: mean word counts within 15% of each other
    mean = lambda ps: sum(len(p.split()) for p in ps) / len(ps)  # noqa: E731
    assert abs(mean(pos.prompts) - mean(neg.prompts)) / mean(neg.prompts) < 0.15
    assert not set(pos.prompts) & set(neg.prompts)
    assert len(pos.heldout) == 28 and len(pos.calibration) == len(pos.prompts) - 28  # ceil(0.2 * 139)


def test_split_is_deterministic_and_order_free() -> None:
    a = make_prompt_set("a", PROMPTS)
    b = make_prompt_set("b", list(reversed(PROMPTS)))
    assert set(a.heldout) == set(b.heldout)
    assert len(a.heldout) == 4 and len(a.calibration) == 16
    assert not set(a.heldout) & set(a.calibration)
    assert a.calibration == tuple(p for p in PROMPTS if p not in a.heldout)  # file order kept
    assert a.sha256 != b.sha256  # the hash records the order used


def test_duplicates_and_blank_lines_are_dropped() -> None:
    s = make_prompt_set("x", [*PROMPTS[:10], "", "  ", PROMPTS[0], PROMPTS[1] + "  "])
    assert s.prompts == tuple(PROMPTS[:10])


@pytest.mark.parametrize("suffix", [".txt", ".jsonl", ".csv"])
def test_formats(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"set{suffix}"
    if suffix == ".txt":
        path.write_text("\n".join(PROMPTS) + "\n")
    elif suffix == ".jsonl":
        path.write_text("\n".join(json.dumps({"id": i, "instruction": p}) for i, p in enumerate(PROMPTS)) + "\n")
    else:
        path.write_text("id,text\n" + "\n".join(f'{i},"{p}"' for i, p in enumerate(PROMPTS)) + "\n")
    s = load_prompt_set(path, "positive")
    assert s.prompts == tuple(PROMPTS)
    assert s.name == path.name


def test_csv_with_commas_and_quotes(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    rows = [f'"Say ""hi"", then count to {i}, please"' for i in range(MIN_PROMPTS)]
    path.write_text("prompt\n" + "\n".join(rows) + "\n")
    assert load_prompt_set(path, "positive").prompts[0] == 'Say "hi", then count to 0, please'


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("empty.txt", "", "has 0 distinct"),
        ("small.txt", "\n".join(PROMPTS[: MIN_PROMPTS - 1]), f"has {MIN_PROMPTS - 1} distinct"),
        ("dupes.txt", "\n".join([PROMPTS[0]] * 50), "has 1 distinct"),
        ("bad.jsonl", "{not json}\n", "line 1 is not JSON"),
        ("nofield.jsonl", '{"a": "x", "b": "y"}\n', "no prompt column"),
        ("set.xlsx", "x", "unknown format"),
        ("set.parquet", "x", r"is not a readable parquet file \(ArrowInvalid\)"),
    ],
)
def test_bad_prompt_files(tmp_path: Path, name: str, content: str, reason: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(PromptSetError, match=reason) as info:
        load_prompt_set(path, "positive")
    assert info.value.hint


def test_missing_prompt_file(tmp_path: Path) -> None:
    with pytest.raises(PromptSetError, match="file not found") as info:
        load_prompt_set(tmp_path / "nope.txt", "negative")
    assert "--negative" in info.value.hint


def test_render_uses_chat_template_once(llama_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(llama_dir)
    templated = render_prompts(tok, ["Hello there"], chat_template=True)[0]
    raw = render_prompts(tok, ["Hello there"], chat_template=False)[0]
    text = tok.decode(templated)
    assert text == "<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n"
    assert text.count("<|im_start|>") == 2  # no extra BOS on top of the template
    assert tok.decode(raw).endswith("Hello there")
