"""Prompt jobs: one prompt x seeds, or a prompt file (txt / jsonl) -> a fixed sequence of items.

An item is one image: (index, prompt, negative prompt, seed). The sequence is fixed by the
inputs alone, so a rerun of an interrupted job rebuilds the same items, the same batches
and the same file names, and can skip exactly what is finished. Items are computed on
demand (`Job` holds each prompt's seed range, not one object per image), so a job of a
billion seeds starts at once and takes constant memory.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import re
from collections.abc import Iterator, Sequence


class PromptFileError(ValueError):
    """A prompt file is empty or has a malformed line (the message names the line)."""


@dataclasses.dataclass(frozen=True)
class Item:
    index: int            # position in the job; names the output file
    prompt: str
    negative_prompt: str
    seed: int

    @property
    def stem(self) -> str:
        return f"{self.index:06d}-seed{self.seed}"


STEM = re.compile(r"(\d{6,})-seed(\d+)")


def parse_stem(name: str) -> tuple[int, int] | None:
    """(index, seed) of a file stem written by `Item.stem`, or None for any other name."""
    m = STEM.fullmatch(name)
    return (int(m.group(1)), int(m.group(2))) if m else None


def parse_seeds(text: str) -> Sequence[int]:
    """`"0:8"` (a range, never materialised), `"3"`, or `"1,5,9"` -> seeds; named errors
    for anything else."""
    text = text.strip()
    try:
        if ":" in text:
            start, stop = (int(x) for x in text.split(":", 1))
            if stop <= start:
                raise PromptFileError(f"seed range {text!r} is empty (stop <= start)")
            seeds: Sequence[int] = range(start, stop)
            if start < 0 or stop > 2**32:
                raise PromptFileError(f"seeds must be in [0, 2**32), got {text!r}")
            return seeds
        seeds = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as e:
        if isinstance(e, PromptFileError):
            raise
        raise PromptFileError(f"seeds {text!r}: expected 'start:stop', 'n' or 'a,b,c'") from e
    if not seeds:
        raise PromptFileError("no seeds given")
    if any(s < 0 or s >= 2**32 for s in seeds):
        raise PromptFileError(f"seeds must be in [0, 2**32), got {text!r}")
    return seeds


class Job(Sequence[Item]):
    """The items of a job, in order: each prompt (with its negative prompt) times its seeds.

    Holds one entry per prompt and computes `Item`s on demand, so its memory does not grow
    with the number of seeds (a seed range stays a `range`).
    """

    def __init__(self, groups: Sequence[tuple[str, str, Sequence[int]]]):
        self.groups = list(groups)
        self.starts = []                    # index of each group's first item
        total = 0
        for _, _, seeds in self.groups:
            self.starts.append(total)
            total += len(seeds)
        self.total = total

    def __len__(self) -> int:
        return self.total

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(self.total))]
        if i < 0:
            i += self.total
        if not 0 <= i < self.total:
            raise IndexError(f"item {i} out of range (the job has {self.total})")
        g = bisect.bisect_right(self.starts, i) - 1
        prompt, negative, seeds = self.groups[g]
        return Item(i, prompt, negative, int(seeds[i - self.starts[g]]))

    def __iter__(self) -> Iterator[Item]:
        for g, (prompt, negative, seeds) in enumerate(self.groups):
            for j, s in enumerate(seeds):
                yield Item(self.starts[g] + j, prompt, negative, int(s))


def items_for_prompt(prompt: str, seeds: Sequence[int], negative_prompt: str = "") -> Job:
    return Job([(prompt, negative_prompt, seeds)])


def _jsonl_record(line: str, lineno: int, path: str, default_seeds, default_negative):
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise PromptFileError(f"{path}:{lineno}: not valid JSON ({e.msg})") from e
    if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
        raise PromptFileError(f"{path}:{lineno}: expected an object with a string "
                              f"\"prompt\", got {line.strip()[:80]!r}")
    unknown = set(record) - {"prompt", "negative_prompt", "seed", "seeds"}
    if unknown:
        raise PromptFileError(f"{path}:{lineno}: unknown field(s) {sorted(unknown)}; allowed: "
                              "prompt, negative_prompt, seed, seeds")
    negative = record.get("negative_prompt", default_negative)
    if not isinstance(negative, str):
        raise PromptFileError(f"{path}:{lineno}: \"negative_prompt\" must be a string")
    if "seed" in record and "seeds" in record:
        raise PromptFileError(f"{path}:{lineno}: give \"seed\" or \"seeds\", not both")
    if "seed" in record:
        seeds = (record["seed"],)
    elif "seeds" in record:
        seeds = record["seeds"]
        if isinstance(seeds, str):
            try:
                seeds = parse_seeds(seeds)
            except PromptFileError as e:
                raise PromptFileError(f"{path}:{lineno}: {e}") from None
    else:
        seeds = default_seeds
    if isinstance(seeds, range):
        return record["prompt"], negative, seeds
    if not isinstance(seeds, (list, tuple)) or not seeds or not all(
            isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**32 for s in seeds):
        raise PromptFileError(f"{path}:{lineno}: seeds must be a non-empty list of integers "
                              f"in [0, 2**32), got {seeds!r}")
    return record["prompt"], negative, tuple(seeds)


def _read_text(path: str) -> str:
    from etils import epath
    p = epath.Path(path)
    if not p.exists():
        raise PromptFileError(f"prompt file {path!r} does not exist")
    if p.is_dir():
        raise PromptFileError(f"prompt file {path!r} is a directory; expected a .txt or "
                              ".jsonl file")
    data = p.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise PromptFileError(f"{path}:{line}: not valid UTF-8 (byte {e.start}: "
                              f"{data[e.start:e.start + 1]!r}); save the file as UTF-8"
                              ) from None


def read_prompt_file(path: str, default_seeds: Sequence[int],
                     default_negative: str = "") -> Job:
    """Items from a `.txt` (one prompt per line) or `.jsonl` file.

    jsonl lines: {"prompt": str, "negative_prompt": str?, "seed": int? | "seeds": [int] |
    "a:b"?}; lines without seeds use `default_seeds`. Blank lines are skipped; a file with no
    prompt is an error, and so is any malformed line (its line number is in the message).
    """
    lines = _read_text(path).splitlines()
    jsonl = str(path).endswith((".jsonl", ".json"))
    groups = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if jsonl:
            groups.append(_jsonl_record(line, lineno, path, default_seeds, default_negative))
        else:
            groups.append((line.strip(), default_negative, default_seeds))
    if not groups:
        raise PromptFileError(f"prompt file {path!r} has no prompts")
    return Job(groups)


def num_batches(n_items: int, batch_size: int) -> int:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return -(-n_items // batch_size)


def batch(items: Sequence[Item], k: int, batch_size: int) -> list[Item]:
    """Batch `k` of the fixed consecutive batches; the last may be short (the pipeline pads
    it)."""
    return list(items[k * batch_size:min(len(items), (k + 1) * batch_size)])


def batches(items: Sequence[Item], batch_size: int) -> list[list[Item]]:
    """All the fixed consecutive batches (a short job's; jobs use `batch` one at a time)."""
    return [batch(items, k, batch_size) for k in range(num_batches(len(items), batch_size))]
