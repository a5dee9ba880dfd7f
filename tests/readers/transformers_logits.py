"""Run inside another environment (transformers 4): load DIR as a downloader would, print float32 logits as JSON.

Usage: python transformers_logits.py DIR IDS_JSON OUT_NPY [--generate N]. Writes the logits of each id list
(one forward pass each, no padding) to OUT_NPY as one float32 array [total tokens, vocab], and prints a JSON line
with the transformers version, the config's rope reading, the tokenizer's ids for a probe text (``null`` when the
tokenizer fails) and, with ``--generate N``, N greedy tokens after the first id list.
"""

import json
import sys

import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

directory, ids_json, out = sys.argv[1:4]
model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
rows = []
with torch.no_grad():
    for ids in json.loads(ids_json):
        rows.append(model(torch.tensor([ids])).logits[0].float().numpy())
np.save(out, np.concatenate(rows))
try:
    tokenizer = AutoTokenizer.from_pretrained(directory)
    tokens = tokenizer("How do I bake bread?")["input_ids"]
    tokenizer_class = type(tokenizer).__name__
except Exception as err:  # reported, not raised: the test asserts on it
    tokens, tokenizer_class = None, f"{type(err).__name__}: {err}"[:300]
generated = None
if "--generate" in sys.argv:
    count = int(sys.argv[sys.argv.index("--generate") + 1])
    prompt = torch.tensor(json.loads(ids_json)[:1])
    with torch.no_grad():
        out_ids = model.generate(prompt, do_sample=False, max_new_tokens=count, min_new_tokens=count, pad_token_id=2)
    generated = out_ids[0, prompt.shape[1] :].tolist()
print(
    "READER-RESULT",
    json.dumps(
        {
            "generated": generated,
            "version": transformers.__version__,
            "rope_theta": getattr(model.config, "rope_theta", None),
            "rope_scaling": getattr(model.config, "rope_scaling", None),
            "tokenizer_class": tokenizer_class,
            "tokens": tokens,
        }
    ),
)
