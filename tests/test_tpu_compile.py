"""Every program diffjax runs compiles for real TPU topologies, on this CPU.

libtpu's compile-only client (`diffjax.tpu`, the `tpu` extra) compiles for a slice it cannot
run on: the sample program (text encoder -> sampler scan -> VAE decode), its img2img and
inpainting variants and the UNet train step are lowered from abstract params (shapes and
shardings; nothing placed) and compiled for v5e:2x2 and v5p:2x2x1. A program that works on
CPU can still fail to compile for an accelerator (the H100 refused `jnp.interp` in the
scan): here it fails the suite.

Two sizes: the tiny presets on every variant and mesh (seconds), and the published sizes
(SD1.5 and SDXL, bf16, batch 4, two steps: compiling the scan's body once is what matters,
the step count only sets its trip count), marked slow: a full-size TPU compile costs
minutes of CPU here. Skipped only where libtpu is not installed (CI installs the extra).
"""

import numpy as np
import pytest

from diffjax import tpu

pytestmark = pytest.mark.skipif(not tpu.libtpu_available(),
                                reason="libtpu not installed: pip install -e '.[tpu]'")

TOPOLOGIES = ("v5e:2x2", "v5p:2x2x1")
GiB = 1 << 30


def _pipeline(model, topology, mesh=(-1, 1, 1), batch=4, init=None, sampler="euler",
              steps=2):
    from diffjax.pipeline import SampleSpec, TextToImage
    from diffjax.weights.components import preset_components
    tpu.quiet_libtpu()
    comps = preset_components(model, dtype="bfloat16", attention="xla", weights=False)
    spec = SampleSpec(sampler=sampler, steps=steps, batch_size=batch, dtype="bfloat16",
                      attention="xla", mesh_shape=mesh)
    return TextToImage(comps, spec, devices=tpu.topology_devices(topology), init=init)


def _compiled_fits(compiled, topology):
    """The compiled program's plan per device, checked against the chip's HBM."""
    from diffjax.plan import memory_of
    mem = memory_of(compiled)
    assert 0 < mem["memory_bytes"] <= tpu.hbm_per_device(topology), mem
    return mem


def test_topologies_and_chip_table():
    assert [len(tpu.topology_devices(t)) for t in TOPOLOGIES] == [4, 4]
    assert tpu.chip_count(tpu.topology_devices("v4:2x2x1")) == 4    # 8 devices: 2 per chip
    assert tpu.hbm_per_device("v4:2x2x1") == 16 * GiB
    assert tpu.hbm_per_device("v5e:2x2") == 16 * GiB
    assert tpu.chip_of("v6e:2x2").peak_bf16_flops == 918e12
    with pytest.raises(tpu.TopologyError, match="expected <chip>:<shape>"):
        tpu.chip_of("v9z:2x2")
    with pytest.raises(tpu.TopologyError, match="libtpu refused it"):
        tpu.topology_devices("v5e:3x7")


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_tiny_programs_compile(topology):
    """Text-to-image on a data and a sharded (fsdp x tensor) mesh, img2img, inpainting with
    RePaint blending and the UNet train step, all for the slice, from abstract params; the
    pipeline refuses to run without params instead of placing anything."""
    from diffjax.pipeline import InitImage
    pipe = _pipeline("tiny", topology)
    _compiled_fits(pipe.lower().compile(), topology)
    _compiled_fits(_pipeline("tiny", topology, mesh=(1, 2, 2), batch=2).lower().compile(),
                   topology)
    image = np.zeros((32, 32, 3), np.float32)
    mask = np.zeros((32, 32), np.float32)
    mask[:16] = 1
    for init in (InitImage(image, strength=0.5), InitImage(image, mask=mask)):
        _compiled_fits(_pipeline("tiny", topology, init=init).lower().compile(), topology)
    with pytest.raises(ValueError, match="built without params"):
        pipe.params
    _compiled_fits(_train_step("tiny", topology, (2, 2, 1), batch=4, resolution=32),
                   topology)


def _train_step(model, topology, mesh, batch, resolution):
    from diffjax import sharding
    from diffjax.configs.train import unet
    from diffjax.train.spec import UNetRun, run_spec
    from diffjax.train.unet_trainer import lower_unet_step
    from diffjax.weights.components import preset_components
    tpu.quiet_libtpu()
    c = unet.get_config(f"batch={batch}")
    c.data.dataset = "unused"
    c.data.resolution = resolution
    c.model.name = model
    c.train.compute_dtype = "bfloat16"
    run = run_spec(c, UNetRun)
    comps = preset_components(model, weights=False, attention="xla")
    mesh = sharding.make_mesh(mesh, tpu.topology_devices(topology))
    return lower_unet_step(run, comps, mesh).compile()


# -- the published sizes (slow: minutes of CPU per compile) ---------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("topology", TOPOLOGIES)
@pytest.mark.parametrize("mesh", [(-1, 1, 1), (1, 4, 1)], ids=["data", "fsdp"])
def test_sd15_sample_program_compiles(topology, mesh):
    """SD1.5 at 512^2, bf16, batch 4, CFG: data-parallel and FSDP-sharded params."""
    compiled = _pipeline("sd15", topology, mesh=mesh).lower().compile()
    mem = _compiled_fits(compiled, topology)
    assert compiled.cost_analysis()["flops"] > 1e12
    if mesh[1] == 4:    # FSDP: a quarter of the params' ~4 GB (float32 masters) per device
        assert mem["argument_bytes"] < 2 * GiB


@pytest.mark.slow
@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_sd15_unet_train_step_compiles(topology):
    """The SD1.5 UNet step (AdamW, EMA, bf16 compute) at 256^2 with FSDP over the slice."""
    _compiled_fits(_train_step("sd15", topology, (1, 4, 1), batch=4, resolution=256),
                   topology)


@pytest.mark.slow
@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_sdxl_sample_program_compiles(topology):
    """SDXL base at 1024^2 (two text towers, pooled embedding and time ids), bf16, batch 4,
    FSDP params (float32 masters: 10 GB whole)."""
    compiled = _pipeline("sdxl", topology, mesh=(1, 4, 1)).lower().compile()
    _compiled_fits(compiled, topology)


def test_lowering_places_nothing():
    """Lowering needs no params: a pipeline of configs builds and lowers (jax's CPU devices
    here, so this runs without libtpu too)."""
    from diffjax.pipeline import SampleSpec, TextToImage
    from diffjax.weights.components import preset_components
    comps = preset_components("tiny", weights=False)
    assert comps.unet_params is None
    pipe = TextToImage(comps, SampleSpec(steps=2, batch_size=8, sampler="euler"))
    lowered = pipe.lower()
    assert pipe._params is None    # noqa: SLF001 - nothing was placed
    assert "stablehlo.convolution" in lowered.as_text()
