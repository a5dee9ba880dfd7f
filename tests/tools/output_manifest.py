"""SHA-256 of every file bakesteer writes, for the demo model and a tiny model of each registered family.

Run it on two versions and diff the manifests: a refactor must leave every output byte-identical (issue 16).

    python tests/tools/output_manifest.py OUT.json [--families llama,gpt2] [--no-smollm2]

The tiny models are built from tests/fixtures.py (seeded), the SmolLM2 bake is the former `make demo` job
(`bakesteer convert SmolLM2.gguf --alpha 1`). Run with the bakesteer under test first on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def digest(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--families", default="")
    parser.add_argument("--no-smollm2", action="store_true")
    args = parser.parse_args()

    from fixtures import FIXTURES, write_prompt_files

    import bakesteer
    from bakesteer import ConvertOptions, convert
    from bakesteer.errors import UnsupportedArchitectureError

    manifest: dict[str, dict[str, str]] = {}
    families = [f for f in args.families.split(",") if f] or sorted(FIXTURES)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prompts = write_prompt_files(work)
        options = ConvertOptions(
            alpha=1.0, positive=prompts[0], negative=prompts[1], probes=2, greedy_tokens=4, batch_size=4
        )
        for family in families:
            source = FIXTURES[family](work / "src" / family)
            try:
                out = convert(str(source), work / "out" / family, options).output
            except UnsupportedArchitectureError:  # a norm after the MLP: only a remote-code checkpoint carries it
                remote = dataclasses.replace(options, allow_remote_code=True)
                out = convert(str(source), work / "out" / family, remote).output
            manifest[family] = digest(out)
            print(family, len(manifest[family]), "files", flush=True)
        if not args.no_smollm2:
            from bakesteer.demo import smollm2_gguf

            out = convert(str(smollm2_gguf()), work / "out" / "smollm2", ConvertOptions(alpha=1.0)).output
            manifest["smollm2-alpha1"] = digest(out)
            print("smollm2-alpha1", len(manifest["smollm2-alpha1"]), "files", flush=True)
    manifest["_bakesteer"] = {"version": bakesteer.__version__, "path": str(Path(bakesteer.__file__).parent)}
    args.out.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
