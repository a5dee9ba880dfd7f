"""``bakesteer unbake``: write the base back from an output, without downloading it.

An output of a family that carries the offset in new biases (a config flag) holds the base's shards unchanged: they
are linked back, the bias shard is dropped, the index is rebuilt without it, and the flag is switched off again in
``config.json``. The result loads plainly and equals the base tensor for tensor. Outputs whose base values are not in
them (biases added to existing ones, cast shards, remapped or remote-code checkpoints) are refused with the reason.
"""

from __future__ import annotations

import json
from pathlib import Path

from bakesteer.errors import BakesteerError

#: The strategy whose outputs keep every base tensor as it was.
UNBAKEABLE = "native_flag"


class UnbakeError(BakesteerError, ValueError):
    """An output whose base cannot be written back from it alone.

    Attributes:
        subject: The output.
        reason: Why its base values are not in it.
    """

    def __init__(self, subject: str, *, reason: str) -> None:
        self.subject = subject
        self.reason = reason
        super().__init__(
            f"cannot unbake {subject}: {reason}",
            hint="download the base itself (its id and revision are in bakesteer.json)",
        )


def unbake(directory: Path, output: Path, *, overwrite: bool = False) -> Path:
    """Write the base of the bakesteer output ``directory`` into ``output``.

    Returns:
        The output directory.

    Raises:
        NotAnOutputError: ``directory`` is not a bakesteer output.
        UnbakeError: its base values are not in it (see the module docstring).
        OutputExistsError: ``output`` exists and is not empty (without ``overwrite``).
    """
    from bakesteer.configfiles import CONFIG_FILE, copy_small_files, edit_json
    from bakesteer.record import read_output
    from bakesteer.writer import (
        INDEX_FILE,
        NEW_SHARD,
        SINGLE_FILE,
        SINGLE_SOURCE_SHARD,
        AtomicDirectory,
        check_output,
        link_or_copy,
        read_header,
    )

    out = read_output(Path(directory), vector=False)
    record, name = out.record, out.directory.name
    if record.strategy != UNBAKEABLE:
        raise UnbakeError(name, reason=f"its strategy is {record.strategy}: the base's own values are not all in it")
    if record.options.get("dtype", "auto") != "auto":
        raise UnbakeError(
            name, reason=f"it was written with --dtype {record.options['dtype']}: its shards may be a cast"
        )
    weights = list(record.data["output"]["weight_files"])
    if NEW_SHARD not in weights:
        raise UnbakeError(name, reason=f"it has no {NEW_SHARD} to drop")
    check_output(Path(output).absolute(), overwrite=overwrite, source=str(directory))
    base_shards = [w for w in weights if w != NEW_SHARD]
    with AtomicDirectory(Path(output), overwrite=overwrite, source=str(directory)) as staging:
        if base_shards == [SINGLE_SOURCE_SHARD]:
            link_or_copy((out.directory / SINGLE_SOURCE_SHARD).resolve(), staging.path / SINGLE_FILE)
        else:
            weight_map: dict[str, str] = {}
            total = 0
            for shard in base_shards:
                link_or_copy((out.directory / shard).resolve(), staging.path / shard)
                header, _ = read_header(out.directory / shard)
                for key, entry in header.items():
                    if key != "__metadata__":
                        weight_map[key] = shard
                        total += entry["data_offsets"][1] - entry["data_offsets"][0]
            index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
            (staging.path / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
        flags = {key: False for key, value in record.architecture["config_updates"].items() if value is True}
        edit_json(out.directory / CONFIG_FILE, flags, out=staging.path / CONFIG_FILE)
        copy_small_files(out.directory, staging.path)
        final = staging.commit()
    return final
