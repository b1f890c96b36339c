"""`diffjax plan`: compile candidates for a TPU slice, size them against HBM, estimate.

The fast tests plan the tiny preset (and one candidate that cannot fit: a 2048^2 image,
whose 256^2-latent self-attention needs terabytes); the slow one is the must-show on the
SD1.5 preset and v5e:2x2: a table, a recommendation under 16 GB per chip, and a batch it
marks as not fitting that the TPU compiler really refuses or that exceeds HBM.
Skipped only where libtpu is not installed (CI installs the `tpu` extra).
"""

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from diffjax import tpu

pytestmark = pytest.mark.skipif(not tpu.libtpu_available(),
                                reason="libtpu not installed: pip install -e '.[tpu]'")

GiB = 1 << 30


def _plan(tmp_path, *args):
    out = tmp_path / "plan"
    proc = subprocess.run([sys.executable, "-m", "diffjax.cli", "plan", *args, "--out",
                           str(out)], capture_output=True, text=True, timeout=3000,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "plan.json").read_text()), proc.stdout, proc.stderr


def test_estimate_per_device():
    """Utilisation is flops / (seconds x one device's peak), at both ends of the range
    (copies overlapped / waited for), and images/s counts chips; a v4 device is half a
    chip (its peak and bandwidth halve); a compiler estimate is shown with the per-op
    roofline beside it."""
    from diffjax import plan
    row = plan.Row("v5e:2x2", "v5e", 4, 4, (4, 1, 1), 4, "fits")
    plan._estimate(row, tpu.CHIPS["v5e"], 1.665e12, 50.5e9, 0.02, "per-op roofline", 0.04)
    assert row.estimate_source == "per-op roofline"
    assert row.flop_utilisation == pytest.approx(1.665e12 / 197e12 / 0.02)
    assert row.flop_utilisation_serial == pytest.approx(1.665e12 / 197e12 / 0.04)
    assert row.images_per_s_per_chip == pytest.approx(4 / 0.02 / 4)
    assert plan._utilisation(dataclasses.asdict(row)) == "21-42%"
    v4 = plan.Row("v4:2x2x1", "v4", 8, 4, (8, 1, 1), 8, "fits")
    assert plan.device_peak(tpu.CHIPS["v4"], v4) == (275e12 / 2, 1228e9 / 2)
    plan._estimate(v4, tpu.CHIPS["v4"], 275e12, 0, 4.0, "compiler", roofline_seconds=2.5)
    assert v4.flop_utilisation == pytest.approx(0.5)
    assert plan._source(dataclasses.asdict(v4)) == "compiler; roofline 2.5"


def _fake_sweep(limit, sizes, largest, data_ways=4, broken=()):
    """plan's sweep against a fake compiler: a batch fits up to `limit`, above it the
    compiler refuses it for memory (the message libtpu gives), and batches in `broken`
    fail for another reason. Returns the batches compiled, in order, and the rows."""
    from diffjax import plan
    rows = []

    def candidate(b):
        row = plan.Row("v5e:2x2", "v5e", 4, 4, (data_ways, 1, 1), b, "fits")
        if b in broken:
            row.status, row.error = "does not compile", "ValueError: something else"
        elif b > limit:
            row.status = "does not compile"
            row.error = ("JaxRuntimeError: RESOURCE_EXHAUSTED: Ran out of memory on HBM, "
                         "the total memory required for HLO temporaries (18.14G) exceeds "
                         "available HBM (15.75G).")
        rows.append(dataclasses.asdict(row))
        return row

    plan._sweep(candidate, sizes, data_ways, largest, progress=lambda s: None)
    return [r["batch_size"] for r in rows], rows


def test_largest_batch_is_bisected_between_a_fit_and_a_refusal():
    """--largest: the doubling sweep, then bisection in steps of the data shards, each
    batch compiled once; the Markdown names the bound. On v5e-4, SD1.5 with Pallas
    attention fits at 92 and is refused at 100 (docs/performance.md): the numbers here."""
    from diffjax import plan
    default = [4, 8, 16, 32, 64, 128]
    tried, rows = _fake_sweep(92, default, largest=True)
    assert tried == default + [96, 80, 88, 92]         # 64..128 by 4: four probes
    assert len(set(tried)) == len(tried)
    assert plan.fit_bounds(rows) == {("v5e:2x2", (4, 1, 1)): (92, 96)}
    result = {"kind": "sample", "model": "sd15", "job": {"steps": 50}, "rows": rows,
              "recommended": {}}
    assert ("- **v5e:2x2**, mesh 4,1,1: the largest batch that fits is 92; 96 does not "
            "fit.") in plan.markdown(result)

    # without --largest the sweep stops at the first refusal, and says only what it saw
    tried, rows = _fake_sweep(92, default, largest=False)
    assert tried == default
    assert "the largest batch compiled that fits is 64; 128 does not fit." in \
        plan.markdown({**result, "rows": rows})
    # every given size fits: --largest keeps doubling until one is refused
    assert _fake_sweep(92, [8], largest=True)[0] == [8, 16, 32, 64, 128, 96, 80, 88, 92]
    # a failure that is not memory says nothing about other sizes: no bisection from it,
    # and a bisection that meets one stops with what it has
    assert _fake_sweep(92, default, largest=True, broken={128})[0] == default
    assert _fake_sweep(92, default, largest=True, broken={80})[0] == default + [96, 80]
    with pytest.raises(ValueError, match="multiples of 4"):
        plan.largest_fitting(lambda b: True, 64, 126, 4)


def test_network_calls_are_the_sampler_steps_not_an_initialisation():
    """The network call plan compiles on its own is the one the scan repeats: the guided
    UNet on 2 rows per seed (CFG). A pipeline's first lowering in a process also traces
    the UNet's init on a tiny example input (for the params' inference dtypes); counted
    as a call, it once made plan compile a 1-row step for the first candidate of every
    run and estimate half its time and flops. The dtype cache is cleared so that this
    lowering is such a first one. (CPU devices: the count is made while tracing.)"""
    import jax

    from diffjax import plan
    from diffjax.models.inference_dtypes import inference_dtypes
    from diffjax.pipeline import TextToImage
    from diffjax.sample_spec import SampleSpec
    from diffjax.weights.components import preset_components
    inference_dtypes.cache_clear()
    comps = preset_components("tiny", dtype="bfloat16", weights=False)
    pipe = TextToImage(comps, SampleSpec(sampler="euler", steps=3, batch_size=4,
                                         dtype="bfloat16"), devices=jax.devices()[:4])
    with plan.count_network_calls() as calls:
        pipe.lower()
    assert calls == [(2, *pipe.latent_shape)]


@pytest.mark.slow   # two plan runs, three candidates: ~5 min on the shared 2-core VM
def test_plan_tiny_table_recommendation_and_a_misfit(tmp_path):
    result, stdout, stderr = _plan(
        tmp_path, "--config", "diffjax.configs.sample:model=tiny,steps=4,size=2048",
        "--config.dtype=bfloat16", "--topology", "v5e:2x2", "--batch-sizes", "4")
    (row,) = result["rows"]
    assert row["status"] in ("does not compile", "exceeds HBM"), row
    if row["status"] == "exceeds HBM":
        assert row["memory_bytes"] > 16 * GiB
    assert result["recommended"] == {"v5e:2x2": None}
    assert "[v5e:2x2 mesh 4x1x1 batch 4] compiling" in stderr       # progress as it goes

    result, stdout, _ = _plan(
        tmp_path, "--config", "diffjax.configs.sample:model=tiny,steps=4",
        "--config.dtype=bfloat16", "--topology", "v5e:2x2", "--batch-sizes", "4",
        "--mesh", "data", "--mesh", "1,2,2")
    rows = result["rows"]
    assert [(tuple(r["mesh"]), r["batch_size"]) for r in rows] == [((4, 1, 1), 4),
                                                                   ((1, 2, 2), 4)]
    for r in rows:
        assert r["status"] == "fits" and 0 < r["memory_bytes"] < 16 * GiB
        assert r["estimate_seconds"] > 0 and r["flops"] > 0 and r["network_flops"] > 0
        # 4 steps of dpmpp_2m = 4 network calls; the program holds one, 3 more added
        assert r["flops"] > 3 * r["network_flops"]
        assert 0 < r["flop_utilisation"] <= 1
    best = rows[result["recommended"]["v5e:2x2"]]
    assert best["images_per_s_per_chip"] == max(r["images_per_s_per_chip"] for r in rows)
    assert "compiler estimate" in stdout and "recommended mesh" in stdout
    assert (tmp_path / "plan" / "plan.md").read_text() == stdout.rstrip("\n") + "\n"


def test_plan_bad_topology_is_one_line_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "diffjax.cli", "plan", "--topology",
                           "v9:2x2"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2
    assert "expected <chip>:<shape>" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.tpu_full   # two SD1.5 compiles for v5e: ~10 min of CPU on a 2-core machine
def test_plan_sd15_v5e(tmp_path):
    """The must-show: SD1.5, bf16, CFG, 2 steps (estimates scale with the steps: the scan's
    network call is compiled once and counted per step), batches 8 and 64 on v5e:2x2."""
    result, stdout, _ = _plan(
        tmp_path, "--config", "diffjax.configs.sample:model=sd15,steps=2,sampler=euler",
        "--config.dtype=bfloat16", "--topology", "v5e:2x2", "--batch-sizes", "8,64")
    rows = result["rows"]
    best = rows[result["recommended"]["v5e:2x2"]]
    assert best["status"] == "fits" and best["memory_bytes"] < 16 * GiB
    assert "| v5e:2x2 |" in stdout and "recommended mesh" in stdout
    misfits = [r for r in rows if r["status"] != "fits"]
    assert misfits, "batch 64 (32 images per chip, CFG) should not fit 16 GB"
    for r in misfits:
        assert r["status"] == "does not compile" or r["memory_bytes"] > r["hbm_bytes"]
        if r["status"] == "does not compile":
            assert "memory" in r["error"].lower() or "resource" in r["error"].lower()
