"""A resumable sampling job: fixed batches, finished files verified, clean stops.

The job is a fixed sequence of items cut into fixed batches (`diffjax.prompts`), so a rerun
recomputes exactly the unfinished batches with exactly the same inputs and writes identical
files. What is finished is read from the output folder itself, never from a bookkeeping
file a kill could leave stale: a file counts as finished when its name is the item's, the
PNG decodes completely and its metadata equals the item's (`outputs.png_matches`);
anything else is rewritten. Files are written atomically, so a job killed at any moment
(kill -9 included) leaves only complete PNGs plus temporary files the next run removes.

Multi-process jobs: each process writes the rows of a batch its devices computed
(`sharding.owned_rows`) and checks only those files; the processes agree (an all-gather of
one flag per batch) on which batches to run and on when to stop, so none waits in a
collective the others skip. Whatever the process count, a batch runs if any of its files is
missing or bad, and only those files are written: a restart with another process count
re-plans the unfinished batches without rewriting finished files.

Preemption: the first SIGTERM or SIGINT lets the batch in flight finish and be written,
then the job stops with exit status `EXIT_STOPPED` and says how to resume; a second signal
ends the process at once (the default action: nothing is half-written either way).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time

from diffjax import outputs, prompts

EXIT_STOPPED = 75          # sysexits' EX_TEMPFAIL: stopped cleanly by a signal; rerun resumes
INDEX_EVERY_S = 30.0       # rewrite index.jsonl at most this often during a job (and at the end)
WINDOW = 64                # batches whose files are checked (and agreed on) at a time

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """Records the first SIGTERM/SIGINT; from then on both take their default action, so a
    second one ends the process at once even while it waits in compiled code."""

    def __init__(self):
        self.signum: int | None = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():   # None: a handler set outside Python
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
        return False

    def _handle(self, signum, frame):
        self.signum = signum
        for s in SIGNALS:
            signal.signal(s, signal.SIG_DFL)
        print(f"\n{signal.Signals(signum).name}: finishing the batch in flight, then stopping "
              "(a second signal stops at once)", file=sys.stderr, flush=True)

    @property
    def requested(self) -> bool:
        return self.signum is not None


def files_on_disk(out) -> dict[int, int]:
    """{item index: seed} of the PNGs named like a job's items in `out` (one listing)."""
    found: dict[int, int] = {}
    if not out.exists():
        return found
    for name in os.listdir(os.fspath(out)) if "://" not in os.fspath(out) else (
            p.name for p in out.iterdir()):
        if name.endswith(".png"):
            parsed = prompts.parse_stem(name[:-4])
            if parsed:
                found[parsed[0]] = parsed[1]
    return found


def remove_stale_temporaries(out) -> int:
    """Delete the temporary files a killed job left (`.<name>.tmp-<pid>`)."""
    n = 0
    for stale in out.glob(".*.tmp-*"):
        stale.unlink()
        n += 1
    return n


def index_line(item: prompts.Item) -> str:
    return json.dumps(dict(file=f"{item.stem}.png", index=item.index, prompt=item.prompt,
                           negative_prompt=item.negative_prompt, seed=item.seed))


def write_index(out, items, finished: set[int] | None) -> None:
    """index.jsonl: one line per finished image, in item order (all items: finished=None)."""
    lines = ((index_line(i) for i in items) if finished is None else
             (index_line(items[k]) for k in sorted(finished) if k < len(items)))
    outputs.atomic_write_lines(out / "index.jsonl", lines)


def run_job(pipe, items, out, batch_size: int, rows_mine: list[int],
            stop: StopRequest | None = None) -> int:
    """Generate every unfinished batch and write this process's missing or bad files.

    pipe: a TextToImage (`generate_local`, `metadata`); items: the job's `Sequence[Item]`;
    rows_mine: the batch rows this process writes; stop: a StopRequest the caller entered
    earlier (so a signal during loading or compiling stops the job before its first batch),
    or None for one of its own. Returns 0, or EXIT_STOPPED after a signal.
    """
    if stop is None:
        with StopRequest() as own:
            return run_job(pipe, items, out, batch_size, rows_mine, own)
    import jax
    from tqdm import tqdm

    from diffjax.sharding import any_process
    main_process = jax.process_index() == 0
    multi = jax.process_count() > 1
    n = len(items)
    n_batches = prompts.num_batches(n, batch_size)
    if main_process:
        remove_stale_temporaries(out)
    on_disk = files_on_disk(out)
    if multi:      # nobody writes before every process has listed the folder
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("diffjax sample: folder listed")
    finished = {k for k, seed in on_disk.items() if k < n and items[k].seed == seed}
    bar = tqdm(total=n, initial=len(finished), unit="img", desc="sampling",
               disable=not main_process, dynamic_ncols=True, file=sys.stderr)

    def bad_rows(batch):
        """This process's rows of `batch` whose file is missing, unreadable or foreign."""
        bad = []
        for r in rows_mine:
            if r >= len(batch):
                continue
            item = batch[r]
            meta = pipe.metadata(item.prompt, item.negative_prompt, item.seed)
            if item.index not in finished or not outputs.png_matches(
                    out / f"{item.stem}.png", meta):
                bad.append(r)
        return bad

    written = rewritten = ran = 0
    t0 = last_index = time.perf_counter()
    stopped = None
    for w0 in range(0, n_batches, WINDOW):
        ks = range(w0, min(n_batches, w0 + WINDOW))
        todo = {}
        for k in ks:
            batch = prompts.batch(items, k, batch_size)
            todo[k] = (batch, bad_rows(batch))
        needed = any_process([bool(todo[k][1]) for k in ks])
        for k, need in zip(ks, needed):
            if not need:
                continue
            if any_process([stop.requested])[0]:
                stopped = stop.signum or signal.SIGTERM
                break
            batch, bad = todo[k]
            images, owned = pipe.generate_local([i.prompt for i in batch],
                                                [i.negative_prompt for i in batch],
                                                [i.seed for i in batch])
            ran += 1
            for pos in sorted(set(owned) & set(bad)):
                item = batch[pos]
                meta = pipe.metadata(item.prompt, item.negative_prompt, item.seed)
                outputs.atomic_write(out / f"{item.stem}.png",
                                     outputs.png_bytes(outputs.to_uint8(images[pos]), meta))
                rewritten += item.index in finished
                written += 1
            new = [i.index for i in batch if i.index not in finished]
            finished.update(new)
            bar.update(len(new))
            if main_process and time.perf_counter() - last_index > INDEX_EVERY_S:
                write_index(out, items, finished)
                last_index = time.perf_counter()
        if stopped is not None:
            break
    bar.close()
    if multi:      # every process's files are written before the index names them
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("diffjax sample: batches written")
    if stopped is not None:
        if main_process:
            write_index(out, items, finished)
        name = signal.Signals(stopped).name
        when = "after the batch in flight" if ran else "before its first batch"
        print(f"diffjax sample: stopped by {name} {when}; {len(finished)} "
              f"of {n} images are in {out} (nothing half-written). Rerun the same command "
              f"to resume (exit status {EXIT_STOPPED}).", file=sys.stderr)
        return EXIT_STOPPED
    if main_process:
        write_index(out, items, None)
        rate = ran * batch_size / max(time.perf_counter() - t0, 1e-9)
        extra = f", {rewritten} bad file(s) rewritten" if rewritten else ""
        print(f"{n} images in {out} ({ran} batch(es) run, {written} file(s) written by this "
              f"process{extra}; {rate:.2f} images/s after compile)")
    return 0
