import math

import pytest

from bakesteer.errors import OptionError
from bakesteer.options import ConvertOptions, check_alpha_for_model, parse_layers


@pytest.mark.parametrize(
    ("spec", "layers", "band"),
    [
        ("0.4:0.9", 30, (12, 27)),  # SmolLM2: layers 12-26
        ("0.4:0.9", 4, (2, 4)),  # round(1.6) = 2, round(3.6) = 4
        ("0.4:0.9", 5, (2, 5)),  # 0.9 * 5 = 4.5 rounds half up to 5 (Python's round would give 4)
        ("0.5:1", 32, (16, 32)),
        ("0.4:0.9", 32, (13, 29)),  # 12.8 -> 13, 28.8 -> 29
        ("0.1:0.3", 10, (1, 3)),  # exact rationals: 0.3 * 10 is 3, not 2.9999999999999996
        ("12-26", 30, (12, 27)),
        ("0-0", 4, (0, 1)),
        ("3", 4, (3, 4)),
        (" 1 - 2 ", 4, (1, 3)),
    ],
)
def test_parse_layers(spec: str, layers: int, band: tuple[int, int]) -> None:
    assert parse_layers(spec, layers) == band


@pytest.mark.parametrize(
    ("spec", "layers", "reason"),
    [
        ("12-40", 30, "out of range"),
        ("30", 30, "out of range"),
        ("5-3", 30, "first <= last"),
        ("0.9:0.4", 30, "start < end"),
        ("0.4:1.5", 30, "start < end"),
        ("0.50:0.52", 10, "selects no layer"),
        ("abc", 30, "cannot parse"),
        ("1.5-3", 30, "cannot parse"),
        ("", 30, "cannot parse"),
        ("-1", 30, "0 <= first"),
    ],
)
def test_parse_layers_errors(spec: str, layers: int, reason: str) -> None:
    with pytest.raises(OptionError, match=reason) as info:
        parse_layers(spec, layers)
    assert info.value.option == "--layers"
    assert "--layers 0.4:0.9" in info.value.hint


@pytest.mark.parametrize("alpha", [math.nan, math.inf, -math.inf])
def test_non_finite_alpha(alpha: float) -> None:
    with pytest.raises(OptionError, match="finite"):
        ConvertOptions(alpha=alpha).check()


def test_absurd_alpha_is_relative_to_width() -> None:
    check_alpha_for_model(7.9, 64)  # sqrt(64) = 8
    check_alpha_for_model(-7.9, 64)
    with pytest.raises(OptionError, match="sqrt"):
        check_alpha_for_model(8.0, 64)
    with pytest.raises(OptionError, match="sqrt"):
        check_alpha_for_model(-100, 576)


def test_counts_must_be_positive() -> None:
    with pytest.raises(OptionError, match="--batch-size"):
        ConvertOptions(batch_size=0).check()
    with pytest.raises(OptionError, match="--probes"):
        ConvertOptions(probes=1).check()


def test_to_dict_has_no_local_paths(tmp_path) -> None:
    opts = ConvertOptions(positive=tmp_path / "secret" / "pos.txt")
    assert opts.to_dict()["positive"] == "pos.txt"
    assert str(tmp_path) not in str(opts.to_dict())
