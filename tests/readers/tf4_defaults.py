"""Print transformers 4's config defaults for the fields bakesteer checks (run with a transformers 4 interpreter).

Regenerates ``bakesteer/architectures/transformers4.py``'s table: ``python tests/readers/tf4_defaults.py`` in the
``make readers`` transformers 4 environment; the slow tier runs it and compares.
"""

import json
import re
import sys

from transformers import CONFIG_MAPPING

FIELD = re.compile(r"rope|rotary|eps|epsilon|vocab_size|max_position|multiplier|logits_scaling|tie_word|hidden_act")
FAMILIES = sys.argv[1:]
out = {}
for family in FAMILIES:
    if family not in CONFIG_MAPPING:
        continue
    config = CONFIG_MAPPING[family]()
    out[family] = {k: v for k, v in sorted(config.to_dict().items()) if FIELD.search(k)}
print(json.dumps(out, sort_keys=True))
