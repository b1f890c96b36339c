"""Prompt jobs: one prompt x seeds, or a prompt file (txt / jsonl) -> a fixed list of items.

An item is one image: (index, prompt, negative prompt, seed). The list is fixed by the
inputs alone, so a rerun of an interrupted job rebuilds the same list, the same batches and
the same file names, and can skip exactly what is finished.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence


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


def parse_seeds(text: str) -> tuple[int, ...]:
    """`"0:8"` (range), `"3"`, or `"1,5,9"` -> seeds; named errors for anything else."""
    text = text.strip()
    try:
        if ":" in text:
            start, stop = (int(x) for x in text.split(":", 1))
            if stop <= start:
                raise PromptFileError(f"seed range {text!r} is empty (stop <= start)")
            return tuple(range(start, stop))
        seeds = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as e:
        raise PromptFileError(f"seeds {text!r}: expected 'start:stop', 'n' or 'a,b,c'") from e
    if not seeds:
        raise PromptFileError("no seeds given")
    if any(s < 0 or s >= 2**32 for s in seeds):
        raise PromptFileError(f"seeds must be in [0, 2**32), got {text!r}")
    return seeds


def items_for_prompt(prompt: str, seeds: Sequence[int], negative_prompt: str = "") -> list[Item]:
    return [Item(i, prompt, negative_prompt, int(s)) for i, s in enumerate(seeds)]


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
            seeds = parse_seeds(seeds)
    else:
        seeds = default_seeds
    if not isinstance(seeds, (list, tuple)) or not seeds or not all(
            isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**32 for s in seeds):
        raise PromptFileError(f"{path}:{lineno}: seeds must be a non-empty list of integers "
                              f"in [0, 2**32), got {seeds!r}")
    return record["prompt"], negative, tuple(seeds)


def read_prompt_file(path: str, default_seeds: Sequence[int],
                     default_negative: str = "") -> list[Item]:
    """Items from a `.txt` (one prompt per line) or `.jsonl` file.

    jsonl lines: {"prompt": str, "negative_prompt": str?, "seed": int? | "seeds": [int]?};
    lines without seeds use `default_seeds`. Blank lines are skipped; a file with no prompt
    is an error, and so is any malformed line (its line number is in the message).
    """
    from etils import epath
    p = epath.Path(path)
    if not p.exists():
        raise PromptFileError(f"prompt file {path!r} does not exist")
    lines = p.read_text(encoding="utf-8").splitlines()
    jsonl = str(path).endswith((".jsonl", ".json"))
    items: list[Item] = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if jsonl:
            prompt, negative, seeds = _jsonl_record(line, lineno, path, tuple(default_seeds),
                                                    default_negative)
        else:
            prompt, negative, seeds = line.strip(), default_negative, tuple(default_seeds)
        for s in seeds:
            items.append(Item(len(items), prompt, negative, int(s)))
    if not items:
        raise PromptFileError(f"prompt file {path!r} has no prompts")
    return items


def batches(items: Sequence[Item], batch_size: int) -> list[list[Item]]:
    """Fixed consecutive batches; the last may be short (the pipeline pads it)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return [list(items[i:i + batch_size]) for i in range(0, len(items), batch_size)]
