"""diffjax.train.run_log: metrics.jsonl, TensorBoard event files (read back by TensorBoard's
own EventAccumulator) and the sample-grid PNGs."""

import glob
import json
import os

import numpy as np
import pytest

from diffjax.train import run_log

METRICS = [{"step": 1, "loss": 0.25, "lr": 1e-4}, {"step": 2, "loss": 1 / 3, "lr": 2e-4},
           {"step": 300, "loss": 2.0, "lr": 3e-4}]


def _tensorboard_scalars(logdir: str) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} as TensorBoard reads the folder."""
    accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator",
        reason="reading event files back needs tensorboard (dev extra)")
    acc = accumulator.EventAccumulator(logdir)
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)]
            for tag in acc.Tags()["scalars"]}


def _expected(metrics, key):
    # TensorBoard stores scalars as float32: 1/3 comes back rounded to float32 exactly.
    return [(m["step"], float(np.float32(m[key]))) for m in metrics]


def test_run_logger_writes_jsonl_and_scalars_tensorboard_reads(tmp_path):
    work = str(tmp_path)
    with run_log.RunLogger(work, 300, progress=False) as logger:
        for m in METRICS:
            logger.log(m)
    assert [json.loads(line) for line in open(os.path.join(work, "metrics.jsonl"))] == METRICS
    assert len(glob.glob(os.path.join(work, "tb", "events.out.tfevents.*"))) == 1
    assert _tensorboard_scalars(os.path.join(work, "tb")) == {
        "train/loss": _expected(METRICS, "loss"), "train/lr": _expected(METRICS, "lr")}


def test_resumed_run_keeps_the_first_runs_events(tmp_path):
    """A second logger in the same workdir (a resume, here within the same second) writes
    its own event file and appends to metrics.jsonl; TensorBoard reads both runs."""
    work = str(tmp_path)
    with run_log.RunLogger(work, 300, progress=False) as logger:
        logger.log(METRICS[0])
    resumed = {"step": 3, "loss": 0.5, "lr": 4e-4}
    with run_log.RunLogger(work, 300, initial_step=1, progress=False) as logger:
        logger.log(resumed)
    assert len(glob.glob(os.path.join(work, "tb", "events.out.tfevents.*"))) == 2
    assert [json.loads(line) for line in open(os.path.join(work, "metrics.jsonl"))] == [
        METRICS[0], resumed]
    assert _tensorboard_scalars(os.path.join(work, "tb"))["train/loss"] == _expected(
        [METRICS[0], resumed], "loss")


def test_tensorboard_off_writes_no_event_file(tmp_path):
    with run_log.RunLogger(str(tmp_path), 2, tensorboard=False, progress=False) as logger:
        logger.log(METRICS[0])
    assert not os.path.exists(tmp_path / "tb")
    assert [json.loads(line) for line in open(tmp_path / "metrics.jsonl")] == METRICS[:1]


def test_image_grid_layout_and_png(tmp_path):
    imgs = np.zeros((5, 2, 3, 3), np.float32)
    for k in range(5):
        imgs[k] = k / 4
    g = run_log.image_grid(imgs, cols=2)
    assert g.shape == (3 * 2, 2 * 3, 3) and g.dtype == np.uint8
    # Row-major: image k at (k // 2, k % 2); the missing 6th cell stays black.
    for k in range(5):
        r, c = divmod(k, 2)
        assert (g[2 * r:2 * r + 2, 3 * c:3 * c + 3] == round(k / 4 * 255)).all()
    assert (g[4:, 3:] == 0).all()
    from PIL import Image
    path = run_log.save_grid(imgs, str(tmp_path / "g" / "grid.png"), cols=2, scale=3)
    assert np.asarray(Image.open(path)).shape == (18, 18, 3)
    with pytest.raises(ValueError, match=r"expected images \[N, H, W, C\], got shape \(2, 3\)"):
        run_log.image_grid(np.zeros((2, 3)), 1)
