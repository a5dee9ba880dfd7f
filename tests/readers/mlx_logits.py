"""Run inside the mlx-lm environment: load DIR with ``mlx_lm.load`` as a downloader would, save float32 logits.

Usage: python mlx_logits.py DIR IDS_JSON OUT_NPY (see transformers_logits.py for the output).
"""

import json
import sys
from importlib.metadata import version

import mlx.core as mx
import numpy as np
from mlx_lm import load

directory, ids_json, out = sys.argv[1:4]
model, tokenizer = load(directory)
rows = []
for ids in json.loads(ids_json):
    logits = model(mx.array([ids]))[0].astype(mx.float32)
    rows.append(np.array(logits))
np.save(out, np.concatenate(rows))
tokens = tokenizer.encode("How do I bake bread?")
print(
    "READER-RESULT",
    json.dumps({"version": version("mlx-lm"), "tokenizer_class": type(tokenizer).__name__, "tokens": tokens}),
)
