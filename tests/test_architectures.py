"""Registry completeness: every entry has a tiny fixture and bakes exactly; unknown families are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from fixtures import FIXTURES

from bakesteer import ConvertOptions, convert
from bakesteer.architectures import REGISTRY, spec_for
from bakesteer.errors import UnsupportedArchitectureError


def test_every_entry_has_a_fixture() -> None:
    assert set(REGISTRY) == set(FIXTURES)


@pytest.mark.parametrize("model_type", sorted(REGISTRY))
def test_entry_bakes_exactly(model_type: str, models_dir: Path, prompt_files, tmp_path: Path) -> None:
    src = FIXTURES[model_type](models_dir / f"arch-{model_type}")
    result = convert(str(src), tmp_path / "out", ConvertOptions(positive=prompt_files[0], negative=prompt_files[1]))
    v = result.validation
    assert v.passed and v.relative_diff <= 1e-4 and v.greedy_equal and not v.missing_keys and not v.unexpected_keys
    assert v.base_relative_diff > 1e-2


def test_unknown_family_lists_supported() -> None:
    from transformers import GPT2Config

    with pytest.raises(UnsupportedArchitectureError) as info:
        spec_for(GPT2Config())
    assert info.value.model_type == "gpt2"
    assert info.value.supported == sorted(REGISTRY)
    assert "llama" in str(info.value)
