"""Evaluating a set of images: resumable features, the metrics, gates and the report.

What `diffjax evaluate` computes once its images exist (and what `diffjax compare` can call):
- features per extractor, cached in fixed chunks of `CHUNK` images (`FeatureCache`), so a
  job killed at any moment recomputes at most one chunk and ends with the same numbers;
- per extractor against the reference: Fréchet distance (`fid` on the FID Inception,
  `fd_dinov2`, `fd_clip`), and with reference features (not only stats) KID and
  precision/recall on the Inception features (`kid`, `kid_std`, `precision`, `recall`);
- CLIP score: torchmetrics' aggregate max(mean(100 cos), 0) of the per-image scores;
- gates `name=LO:HI`: each metric must lie in [LO, HI] (MLPerf's SDXL acceptance: FID in
  [23.01, 23.95], CLIP score in [31.68, 31.81]).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

import numpy as np

CHUNK = 512   # images per cached feature file


class GateError(ValueError):
    """A --gate is malformed or names a metric this evaluation does not compute."""


@dataclasses.dataclass(frozen=True)
class Gate:
    metric: str
    low: float
    high: float

    def passes(self, value: float) -> bool:
        return value is not None and math.isfinite(value) and self.low <= value <= self.high


def parse_gate(text: str) -> Gate:
    """"fid=23.01:23.95" -> Gate (either bound may be empty: open)."""
    name, sep, rng = text.partition("=")
    lo, sep2, hi = rng.partition(":")
    if not (sep and sep2 and name.strip()):
        raise GateError(f"gate {text!r}: expected METRIC=LOW:HIGH (e.g. fid=23.01:23.95)")
    try:
        low = float(lo) if lo.strip() else -math.inf
        high = float(hi) if hi.strip() else math.inf
    except ValueError as e:
        raise GateError(f"gate {text!r}: bounds must be numbers") from e
    if low > high:
        raise GateError(f"gate {text!r}: low {low} > high {high}")
    return Gate(name.strip(), low, high)


def check_gate_names(gates, available) -> None:
    unknown = [g.metric for g in gates if g.metric not in available]
    if unknown:
        raise GateError(f"gate on {', '.join(unknown)}: not computed by this evaluation "
                        f"(it computes {', '.join(sorted(available)) or 'nothing'})")


def failed_gates(results: dict, gates) -> list[str]:
    """One line per gate the results do not pass."""
    return [f"{g.metric} = {results.get(g.metric)} not in [{g.low}, {g.high}]"
            for g in gates if not g.passes(results.get(g.metric))]


class FeatureCache:
    """Features of images 0..n-1 for one extractor, in chunk files `<dir>/<k>.npz`, each
    written atomically when its chunk is done; `get` computes only the missing chunks."""

    def __init__(self, directory: str, chunk: int = CHUNK):
        self.directory = directory
        self.chunk = chunk
        os.makedirs(directory, exist_ok=True)

    def get(self, n: int, extract, progress=None) -> dict[str, np.ndarray]:
        """extract(lo, hi) -> {name: array [hi - lo, ...]} for images lo..hi-1; only the
        chunks without a file are computed (`extract` reports its own progress; `progress(k)`
        counts the chunks read back)."""
        for name in os.listdir(self.directory):      # left by a job killed mid-write
            if ".tmp-" in name:
                os.remove(os.path.join(self.directory, name))
        parts = []
        for k, lo in enumerate(range(0, n, self.chunk)):
            hi = min(lo + self.chunk, n)
            path = os.path.join(self.directory, f"{k:05d}-{lo}-{hi}.npz")
            if os.path.exists(path):
                with np.load(path, allow_pickle=False) as f:
                    parts.append({name: f[name] for name in f.files})
                if progress is not None:
                    progress(hi - lo)
            else:
                out = {name: np.asarray(v) for name, v in extract(lo, hi).items()}
                tmp = path + f".tmp-{os.getpid()}.npz"
                np.savez(tmp, **out)
                os.replace(tmp, path)
                parts.append(out)
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def frechet_of(features, reference) -> float:
    """FD of features [N, D] against reference features [M, D] or (mu, sigma)."""
    from diffjax.metrics.frechet import frechet_distance, gaussian_stats
    ref = reference if isinstance(reference, tuple) else gaussian_stats(reference)
    return frechet_distance(*gaussian_stats(features), *ref)


def kid_of(features, reference_features, subsets: int = 100, subset_size: int = 1000):
    """torch-fidelity's KID, the subset size capped at the smaller set (it refuses less)."""
    from diffjax.metrics.kid import kid
    m = min(subset_size, len(features), len(reference_features))
    return kid(features, reference_features, subsets=subsets, subset_size=m)


def metric_names(extractors, have_reference_features: bool, have_reference: bool,
                 have_captions: bool) -> set[str]:
    """The result keys an evaluation will produce (gates are checked against these)."""
    names = {"num_images"}
    if "clip" in extractors and have_captions:
        names.add("clip_score")
    if have_reference:
        names |= {FD_NAMES[e] for e in extractors}
    if have_reference_features and "inception" in extractors:
        names |= {"kid", "kid_std", "precision", "recall"}
    return names


FD_NAMES = {"inception": "fid", "dinov2": "fd_dinov2", "clip": "fd_clip"}


def markdown_table(results: dict, info: dict) -> str:
    """The results as a Markdown table, the extractors and reference underneath."""
    lines = ["| metric | value |", "|---|---:|"]
    for k, v in results.items():
        lines.append(f"| {k} | {v:.6g} |" if isinstance(v, float) else f"| {k} | {v} |")
    lines.append("")
    for k, v in info.items():
        lines.append(f"- {k}: {v}")
    return "\n".join(lines) + "\n"


def write_json_atomic(path: str, data) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)
