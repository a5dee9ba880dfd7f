"""The one dtype table: names, torch dtypes, safetensors codes and sizes (options, bakesteer.json, the writer and the
checks all read it)."""

from __future__ import annotations

import torch

#: The one dtype table: (name as options and bakesteer.json write it, torch dtype, safetensors code, bytes per
#: element). The floating rows are the dtypes a conversion can write.
DTYPE_TABLE: tuple[tuple[str, torch.dtype, str, int], ...] = (
    ("float32", torch.float32, "F32", 4),
    ("bfloat16", torch.bfloat16, "BF16", 2),
    ("float16", torch.float16, "F16", 2),
    ("float64", torch.float64, "F64", 8),
    ("int64", torch.int64, "I64", 8),
    ("int32", torch.int32, "I32", 4),
    ("int16", torch.int16, "I16", 2),
    ("int8", torch.int8, "I8", 1),
    ("uint8", torch.uint8, "U8", 1),
    ("bool", torch.bool, "BOOL", 1),
)
#: ``--dtype`` names -> torch dtype (the floating types a conversion writes).
DTYPES: dict[str, torch.dtype] = {name: dtype for name, dtype, _, _ in DTYPE_TABLE[:3]}
#: safetensors codes of those floating types -> torch dtype.
FLOAT_CODES: dict[str, torch.dtype] = {code: dtype for _, dtype, code, _ in DTYPE_TABLE[:3]}
#: torch dtype -> safetensors code, every row.
SAFETENSORS_CODE: dict[torch.dtype, str] = {dtype: code for _, dtype, code, _ in DTYPE_TABLE}
#: safetensors code -> bytes per element, every row.
ITEMSIZE: dict[str, int] = {code: size for _, _, code, size in DTYPE_TABLE}
