"""One corpus sharded by many machines: a frozen plan of parts, parts that cannot collide, a merge.

    w2v-make-shards SRC --out DIR --num-parts N --part K     # one per array task, any order, concurrently
    w2v-merge-shards DIR                                     # once every part is done: one index.json

The inputs are split into N contiguous ranges of their listed order. The first part to start
records the plan (`DIR/parts.json`: N, the input count, the source and the settings) with an
exclusive create, so concurrent parts agree on it; a part whose N, inputs or settings differ is
refused. Part K writes shards named `NAME-pKKKKK-NNNNNN.tar` and, under `DIR/parts/`, its own
index, its skipped list and last a completion marker; running a part again replaces that part
alone. The merge refuses a plan with a missing or unfinished part, and writes `index.json` and
`skipped.jsonl` atomically, streaming the parts' indexes one at a time (memory stays that of one
part, whatever the corpus).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from w2v.atomic import TMP_SUFFIX, AtomicFile, replace_path, temporary_dir_beside, write_atomic
from w2v.shards.columns import COLUMNS_DIR, ColumnsWriter, index_identity
from w2v.shards.index import FORMAT_TAG, INDEX_NAME, SAMPLE_RATE, SKIPPED_NAME

PLAN_NAME = "parts.json"
PLAN_FORMAT = "w2v-parts/1"
PARTS_DIR = "parts"


class PartsError(ValueError):
    """A part that does not fit the plan, or a merge of parts that are not all done (exit 2)."""


@dataclass(frozen=True)
class Part:
    index: int  # K, from 0
    count: int  # N

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise PartsError(f"part {self.index} of {self.count}: --part must be in 0..--num-parts-1")

    @property
    def tag(self) -> str:
        return f"p{self.index:05d}"

    def range(self, inputs: int) -> tuple[int, int | None]:
        """Positions [start, end) of this part's inputs; the last part runs to the end of the list."""
        start = self.index * inputs // self.count
        return start, None if self.index == self.count - 1 else (self.index + 1) * inputs // self.count


def part_from_environment(num_parts: int | None, part: int | None) -> Part | None:
    """--part/--num-parts, else a SLURM array task's, else a Kubernetes indexed Job's (with
    --num-parts); None for a run of the whole corpus."""
    env = os.environ
    if part is None and "SLURM_ARRAY_TASK_ID" in env:
        part = int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
        num_parts = num_parts or int(env["SLURM_ARRAY_TASK_COUNT"])
    elif part is None and "JOB_COMPLETION_INDEX" in env and num_parts:
        part = int(env["JOB_COMPLETION_INDEX"])
    if part is None and num_parts is None:
        return None
    if part is None or num_parts is None:
        raise PartsError("give both --num-parts and --part (or run as a SLURM array task)")
    return Part(part, num_parts)


def part_files(out: Path, part: Part) -> dict[str, Path]:
    folder = Path(out) / PARTS_DIR
    return {"index": folder / f"{part.tag}.{INDEX_NAME}", "skipped": folder / f"{part.tag}.{SKIPPED_NAME}",
            "done": folder / f"{part.tag}.done.json"}


def record_plan(out: Path, part: Part, plan: dict) -> dict:
    """The plan of DIR: written by the first part to come (exclusive create), checked by the others."""
    path = Path(out) / PLAN_NAME
    plan = {"format": PLAN_FORMAT, **plan}
    # a name of its own (parts on other machines may have the same pid), complete before it is linked
    fd, name = tempfile.mkstemp(dir=out, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    tmp = Path(name)
    with os.fdopen(fd, "wb") as handle:
        handle.write(json.dumps(plan, indent=1, ensure_ascii=False).encode("utf-8"))
        handle.flush()
        os.fsync(handle.fileno())
    try:
        os.link(tmp, path)  # fails if another part recorded it first: then theirs is the plan
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    recorded = json.loads(path.read_text(encoding="utf-8"))
    differences = settings_differences(recorded, plan, "the plan", f"part {part.index}")
    if differences:
        raise PartsError(f"{path} was made for another split or other settings (part {part.index}):\n  "
                         + "\n  ".join(differences))
    return recorded


def settings_differences(ours: dict, theirs: dict, our_name: str, their_name: str, prefix: str = "") -> list[str]:
    """Each setting that differs, by its dotted name: `options.codec: flac in the plan, wav in part 1`."""
    out = []
    for key in sorted(set(ours) | set(theirs), key=str):
        mine, other = ours.get(key), theirs.get(key)
        if isinstance(mine, dict) and isinstance(other, dict):
            out += settings_differences(mine, other, our_name, their_name, f"{prefix}{key}.")
        elif mine != other:
            out.append(f"{prefix}{key}: {mine!r} in {our_name}, {other!r} in {their_name}")
    return out


def clear_part(out: Path, prefix: str, part: Part) -> None:
    """Remove what an earlier run of this part wrote (its marker first: it is unfinished from now)."""
    files = part_files(out, part)
    files["done"].unlink(missing_ok=True)
    for path in (files["index"], files["skipped"], *Path(out).glob(f"{prefix}-{part.tag}-*.tar")):
        path.unlink(missing_ok=True)


def mark_done(out: Path, part: Part, summary: dict) -> None:
    write_atomic(part_files(out, part)["done"], json.dumps(summary, indent=1).encode())


@dataclass
class MergeSummary:
    parts: int
    inputs: int
    written: int
    skipped: dict[str, int]
    shards: int
    seconds: float

    def text(self) -> str:
        return (f"{self.parts} parts: inputs {self.inputs} = written {self.written} + skipped "
                f"{sum(self.skipped.values())}; {self.shards} shards, {self.seconds / 3600:.3f} h")


def merge_parts(out: Path) -> MergeSummary:
    """One index.json and skipped.jsonl for DIR from its parts; nothing is written unless every part
    of the plan is done and agrees with it."""
    out = Path(out)
    plan_path = out / PLAN_NAME
    if not plan_path.is_file():
        raise PartsError(f"{out}: no {PLAN_NAME}: not a folder of parts (made with --num-parts/--part)")
    plan = json.loads(plan_path.read_text(encoding="utf-8"))
    parts = [Part(k, plan["num_parts"]) for k in range(plan["num_parts"])]
    missing = [p.index for p in parts if not part_files(out, p)["done"].is_file()]
    if missing:
        shown = ", ".join(map(str, missing[:20])) + (" …" if len(missing) > 20 else "")
        raise PartsError(f"{out}: {len(missing)} of {len(parts)} parts are missing or unfinished: {shown} "
                         "(run them again: each replaces its own files)")
    totals = {"inputs": 0, "samples": 0, "shards": 0, "seconds": 0.0}
    skipped: Counter = Counter()
    columns_tmp = temporary_dir_beside(out / COLUMNS_DIR)  # the loader's columns, written on the way
    columns = ColumnsWriter(columns_tmp)
    try:
        _merge_into(out, plan, parts, totals, skipped, columns)
        columns.finish(index_identity(str(out / INDEX_NAME)))
        replace_path(columns_tmp, out / COLUMNS_DIR)
    except BaseException:
        shutil.rmtree(columns_tmp, ignore_errors=True)
        raise
    return MergeSummary(len(parts), totals["inputs"], totals["samples"], dict(skipped), totals["shards"],
                        totals["seconds"])


def _merge_into(out: Path, plan: dict, parts: list[Part], totals: dict, skipped: Counter,
                columns: ColumnsWriter) -> None:
    with AtomicFile(out / INDEX_NAME) as index, AtomicFile(out / SKIPPED_NAME) as skipped_log:
        index.write(b'{"format": "' + FORMAT_TAG.encode() + b'", "shards": [')
        first = True
        for part in parts:
            files = part_files(out, part)
            part_index = json.loads(files["index"].read_text(encoding="utf-8"))
            made_with = {"options": part_index.get("options"), "source": part_index.get("source")}
            differences = settings_differences({"options": plan["options"], "source": plan["source"]}, made_with,
                                               PLAN_NAME, f"part {part.index}")
            if differences:
                raise PartsError(f"part {part.index} was made with other settings than {PLAN_NAME}:\n  "
                                 + "\n  ".join(differences))
            for shard in part_index["shards"]:
                index.write((b"" if first else b", ") + json.dumps(shard, ensure_ascii=False).encode())
                columns.add_shard(shard)
                first = False
            totals["inputs"] += part_index["inputs"]
            totals["samples"] += part_index["num_samples"]
            totals["shards"] += part_index["num_shards"]
            totals["seconds"] += part_index["total_seconds"]
            skipped.update(part_index["skipped"])
            with open(files["skipped"], "rb") as lines:
                while block := lines.read(1 << 20):
                    skipped_log.write(block)
        tail = {"sample_rate": SAMPLE_RATE, "num_shards": totals["shards"], "num_samples": totals["samples"],
                "total_seconds": round(totals["seconds"], 3), "name": plan["prefix"],
                "codec": plan["options"]["codec"], "inputs": totals["inputs"], "skipped": dict(skipped),
                "source": plan["source"], "options": plan["options"], "parts": len(parts)}
        index.write(b"], " + json.dumps(tail, ensure_ascii=False)[1:].encode())
