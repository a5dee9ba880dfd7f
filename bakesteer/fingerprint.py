"""The fingerprint of a conversion: a SHA-256 over everything that determines the written weights.

It is computed twice, from the same record: by ``convert`` after the fact (stored in ``bakesteer.json`` and the
card) and by ``publish`` before converting anything, so that a variant whose fingerprint is already on the Hub is
skipped without loading the model.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from bakesteer.options import AUTO
from bakesteer.prompts import pinned_hash
from bakesteer.record import Record

#: The options that shape the offsets or the output dtype. Validation, device and batch size do not.
FINGERPRINT_OPTIONS = ("alpha", "layers", "chat_template", "dtype", "allow_remote_code")
#: With ``alpha = "auto"``, the options of the sweep that chooses k (recorded only then, so fixed-k fingerprints
#: keep their format).
AUTO_OPTIONS = ("direction", "max_new_tokens")
#: ... and, when a judge chooses k, what it is and what it rates.
JUDGE_OPTIONS = ("judge", "judge_model", "rubric", "concept")
#: The ``--alpha auto`` rule's version: 2 walks up with an early stop, one bisection and the degeneration gate.
AUTO_RULE = 2


def fingerprint_of(
    source: Mapping[str, Any],
    bakesteer_version: str,
    options: Mapping[str, Any],
    prompt_sha256: Mapping[str, str | None],
) -> str:
    """SHA-256 (hex) of the canonical JSON of what determines the weights.

    Args:
        source: ``ModelSource.describe()``: kind, model id and resolved revision (Hub commit, GGUF SHA-256, or a
            local directory's content digest).
        bakesteer_version: The version that converts.
        options: ``ConvertOptions.to_dict()``; only :data:`FINGERPRINT_OPTIONS` are read.
        prompt_sha256: ``{"positive": sha256, "negative": sha256}`` of the calibration prompt sets (and ``eval``, the
            eval prompts' hash, read only with ``alpha = "auto"``).
    """
    alpha = options.get("alpha")
    record: dict[str, Any] = {
        "source": {k: source.get(k) for k in ("kind", "model_id", "revision")},
        "bakesteer": bakesteer_version,
        # 1 and 1.0 are the same k: a TOML integer must not change the fingerprint
        "options": {
            k: float(alpha) if k == "alpha" and alpha not in (None, AUTO) else options.get(k)
            for k in FINGERPRINT_OPTIONS
        },
        "prompts": {role: prompt_sha256.get(role) for role in ("positive", "negative")},
    }
    if alpha == AUTO:  # the sweep that chooses k: its options and the eval prompts shape the weights too
        record["auto"] = {k: options.get(k) for k in AUTO_OPTIONS} | {"eval_prompts": prompt_sha256.get("eval")}
        record["auto"]["rule"] = AUTO_RULE
        if options.get("judge"):
            record["auto"]["judge"] = {k: options.get(k) for k in JUDGE_OPTIONS}
    return hashlib.sha256(json.dumps(record, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def metadata_fingerprint(record: Record) -> str:
    """The fingerprint of a finished conversion, from its ``bakesteer.json`` record."""
    calibration = record.calibration
    return fingerprint_of(
        record.base_model,
        record.version,
        record.options,
        {role: pinned_hash(calibration.get(role, {})) for role in ("positive", "negative")}
        | {"eval": pinned_hash((record.sweep or {}).get("eval_set", {}))},
    )
