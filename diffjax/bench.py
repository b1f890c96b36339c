"""UNet / sampler / VAE throughput, compile time and FLOP utilisation (`diffjax bench`).

Every number is measured in one run on one machine and reported with the device: the time
of one UNet call on the CFG batch, of a whole N-step sample (so the sampler loop's overhead
is a ratio of two measurements), of the VAE decode; compile time cold and from the
persistent cache; FLOPs from XLA's cost analysis beside an analytic count (dot and conv
FLOPs summed over the jaxpr); model FLOP utilisation against the device's peak (a table
for accelerators, a matmul probe on CPU). `--vs diffusers` times diffusers' PyTorch UNet
with the same weights, batch and precision in the same process, call by call interleaved
with ours (so load on the machine hits both alike). `startup = true` also measures what a
user waits for: a fresh process building the first batch's sample executable with an
empty persistent compilation cache (cold) and again with it filled (cached). Memory: XLA's
planned temporaries of the UNet call and of the whole sample program and each program's
whole plan (arguments + outputs + temporaries; known before they run), the device's peak
bytes in use where the backend reports it, the process's peak RSS. SDXL models are timed
with their pooled embedding and time ids (diffusers' added_cond_kwargs).
"""

from __future__ import annotations

import dataclasses
import platform
import time
import typing

import numpy as np

from diffjax.spec import check_range

# Dense bf16 peak FLOP/s per chip (vendor figures; fp32 uses the same table / 2 for TPUs
# and the TF32 figure for NVIDIA, both as documented by the vendors).
PEAK_BF16 = {"TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12,
             "TPU v6 lite": 918e12, "TPU v6e": 918e12, "NVIDIA H100": 989e12,
             "NVIDIA H200": 989e12, "NVIDIA A100": 312e12}


@dataclasses.dataclass(frozen=True)
class BenchSpec:
    """A bench config at its boundary (`to_dataclass(config, BenchSpec)`). Every default is
    here; diffjax/configs/bench/*.py state only their choices (`config_dict`)."""

    model: str = "tiny"
    height: int = 0                      # 0: the model's native size
    width: int = 0
    dtype: typing.Literal["float32", "bfloat16"] = "float32"
    batch_sizes: tuple[int, ...] = (1,)
    steps: int = 10
    sampler: str = "euler"
    attention: typing.Literal["auto", "xla", "cudnn", "chunked", "pallas"] = "auto"
    repeats: int = 3
    vs: typing.Literal["", "diffusers"] = ""
    startup: bool = False                # fresh-process cold / cached compile times

    def __post_init__(self):
        from diffjax.diffusion.samplers import get_sampler
        get_sampler(self.sampler)   # a named ConfigError before any model is built
        check_range("steps", self.steps, lo=1)
        check_range("repeats", self.repeats, lo=1)
        for b in self.batch_sizes:
            check_range("batch_sizes[]", b, lo=1)


def _interleaved(fns: dict, repeats: int) -> dict:
    """Median wall time of each blocking fn, timed in turn: a, b, a, b, ..."""
    times: dict = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) for k, v in times.items()}


def peak_memory() -> dict:
    """Device peak bytes in use (None where the backend keeps no stats, e.g. CPU) and the
    process's peak resident set (bytes)."""
    import resource

    import jax
    stats = jax.devices()[0].memory_stats() or {}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return dict(device_peak_bytes=stats.get("peak_bytes_in_use"),
                host_peak_rss_bytes=rss * (1 if platform.system() == "Darwin" else 1024))


# What `startup` runs in a fresh interpreter: build the pipeline and its executable.
_STARTUP_SCRIPT = """
import sys, time
t0 = time.perf_counter()
from diffjax.weights.load import load
from diffjax.pipeline import TextToImage, enable_compilation_cache
from diffjax.sample_spec import SampleSpec
enable_compilation_cache(sys.argv[1])
import jax
comps = load(sys.argv[2], sys.argv[3], sys.argv[4])
pipe = TextToImage(comps, SampleSpec(sampler=sys.argv[5], steps=int(sys.argv[6]),
                   batch_size=int(sys.argv[7]), dtype=sys.argv[3], attention=sys.argv[4],
                   mesh_shape=(1, 1, 1)), devices=jax.devices()[:1])
t1 = time.perf_counter()
pipe.compile_seconds()
t2 = time.perf_counter()
pipe(["a benchmark prompt"], [0])
print(f"STARTUP {t1 - t0:.4f} {t2 - t1:.4f} {time.perf_counter() - t0:.4f}")
"""


def measure_startup(spec: "BenchSpec", batch: int) -> dict:
    """Fresh-process times with an empty persistent cache, then with it filled: the load
    (imports + weights + pipeline), the executable (compile or cache load), and the total
    until the first image exists."""
    import subprocess
    import sys
    import tempfile
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        for name in ("cold", "cached"):
            r = subprocess.run([sys.executable, "-c", _STARTUP_SCRIPT, cache, spec.model,
                                spec.dtype, spec.attention, spec.sampler, str(spec.steps),
                                str(batch)], capture_output=True, text=True, check=False)
            line = [ln for ln in r.stdout.splitlines() if ln.startswith("STARTUP ")]
            if r.returncode or not line:
                raise RuntimeError(f"startup measurement failed ({name}): {r.stderr[-2000:]}")
            load, compile_s, total = map(float, line[0].split()[1:])
            out.update({f"{name}_load_s": load, f"{name}_compile_s": compile_s,
                        f"{name}_first_image_s": total})
    return out


def _time(fn, repeats: int) -> float:
    """Median wall time of fn() (which must block until its result is ready)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def flat_unet_fn(unet_cfg, flat: bool = True):
    """`(params, x, t, cond) -> eps` of the UNet (cond: the context, or SDXL's {"context",
    "text_embeds", "time_ids"}) with the loop-free "xla" attention: what both FLOP counts
    read. The same arithmetic as every attention kernel, but visible: the chunked kernel
    is a loop (counted once by XLA) and cuDNN's is one opaque primitive (no dot_general in
    the jaxpr: the analytic count on an H100 missed 16%). flat=False: the configured
    attention (the benchmarked call)."""
    from diffjax.models.unet import UNet2DConditionModel
    unet = UNet2DConditionModel(dataclasses.replace(unet_cfg, attention_impl="xla")
                                if flat else unet_cfg)

    def call(p, x, t, c):
        if isinstance(c, dict):
            return unet.apply({"params": p}, x, t, c["context"], added_cond={
                "text_embeds": c["text_embeds"], "time_ids": c["time_ids"]})
        return unet.apply({"params": p}, x, t, c)
    return call


def unet_cond(comps, n: int, pipe):
    """The UNet's conditioning for a batch of n: a context of ones [n, 77, cross dim];
    SDXL adds a pooled embedding of ones and the pipeline's time ids."""
    import jax.numpy as jnp
    u = comps.unet_config
    ctx = jnp.ones((n, pipe.tokenizer.max_length, u.cross_attention_dim), jnp.float32)
    if not comps.is_sdxl:
        return ctx
    ids = jnp.broadcast_to(jnp.asarray(pipe.time_ids[0]), (n, pipe.time_ids[0].shape[0]))
    pooled = u.projection_class_embeddings_input_dim - ids.shape[1] * u.addition_time_embed_dim
    return {"context": ctx, "text_embeds": jnp.ones((n, pooled), jnp.float32),
            "time_ids": ids}


def unet_flops_xla(unet_cfg, params, x, t, ctx) -> float:
    """FLOPs of one UNet call by XLA's cost analysis of the UNet with the loop-free "xla"
    attention, lowered for the CPU whatever the device (lowered, never compiled).

    Why not the benchmarked executable's own count: XLA counts a loop's body once, and the
    chunked attention (CPU's "auto") is a lax.map over query blocks, so its count missed
    all but one block of every large self-attention; cuDNN's attention is a custom call.
    Why the CPU lowering: the GPU backend gives no analysis before compilation (NaN on an
    H100, jaxlib 0.11.2), and compiling the flat UNet there would materialise every
    attention matrix (SD1.5, batch 16 with CFG: 17 GB of float32 logits per 64x64
    self-attention). The arithmetic is the same on every backend. NaN where no CPU backend
    is initialised (JAX_PLATFORMS without cpu)."""
    import jax
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                            (params, x, t, ctx))
    try:
        lowered = jax.jit(flat_unet_fn(unet_cfg)).trace(*abstract).lower(
            lowering_platforms=("cpu",))
        cost = lowered.cost_analysis()
    except RuntimeError:
        return float("nan")
    if isinstance(cost, (list, tuple)):   # older jax: one dict per computation
        cost = cost[0] if cost else None
    return float((cost or {}).get("flops", float("nan")))


def jaxpr_flops(fn, *args) -> float:
    """Analytic FLOPs: 2 x MACs of every dot_general and conv in the jaxpr (incl. scans)."""
    import jax
    import jax.extend.core
    # jax.core.jaxprs_in_params is deprecated in jax 0.10 for jax.extend.core's
    sub_jaxprs = getattr(jax.extend.core, "jaxprs_in_params", None) or jax.core.jaxprs_in_params

    def count(jaxpr, mult=1.0):
        total = 0.0
        for eqn in jaxpr.eqns:
            name = eqn.primitive.name
            if name == "dot_general":
                (lc, _), (lb, _) = eqn.params["dimension_numbers"]
                a = eqn.invars[0].aval.shape
                out = eqn.outvars[0].aval.shape
                k = np.prod([a[d] for d in lc]) if lc else 1
                total += mult * 2.0 * np.prod(out) * k
            elif name == "conv_general_dilated":
                rhs = eqn.invars[1].aval.shape
                out = eqn.outvars[0].aval.shape
                dn = eqn.params["dimension_numbers"]
                kernel_spatial = np.prod([rhs[d] for d in dn.rhs_spec[2:]])
                in_per_group = rhs[dn.rhs_spec[1]]
                total += mult * 2.0 * np.prod(out) * kernel_spatial * in_per_group
            for sub in sub_jaxprs(eqn.params):
                inner = mult * (eqn.params["length"] if name == "scan" else 1)
                total += count(sub, inner)
        return total
    closed = jax.make_jaxpr(fn)(*args)
    return count(closed.jaxpr)


def cpu_peak_flops(seconds: float = 1.0) -> float:
    """Measured float32 matmul FLOP/s of this CPU (the MFU denominator on CPU)."""
    import jax
    import jax.numpy as jnp
    n = 1024
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        f(a).block_until_ready()
        reps += 1
    return 2 * n ** 3 * reps / (time.perf_counter() - t0)


def device_peak(dtype: str) -> tuple[float | None, str]:
    import jax
    kind = jax.devices()[0].device_kind
    if jax.default_backend() == "cpu":
        return cpu_peak_flops(), "measured matmul probe"
    for name, peak in PEAK_BF16.items():
        if kind.startswith(name):
            return (peak if dtype == "bfloat16" else peak / 2), f"table: {name} {dtype}"
    return None, f"no peak known for {kind}"


def _say(msg: str) -> None:
    """A progress line on stderr: a bench at SD size spends minutes per program, and a run
    cut off (timeout, out of memory) must still say which program it was in."""
    import sys
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def bench_batch(spec: BenchSpec, comps, b: int, peak: float | None,
                on_part=None) -> dict:
    """One row of the report: every measurement at batch size b. on_part(row so far) once
    the UNet call is measured, before the sample program compiles: at a size where that
    program cannot be built (it asked one H100 for 134.6 GB at batch 16) the UNet call's
    time and MFU are still reported."""
    import jax
    import jax.numpy as jnp

    from diffjax.diffusion.samplers import get_sampler
    from diffjax.compiled_memory import memory_parts, needed_bytes
    from diffjax.pipeline import TextToImage
    from diffjax.sample_spec import SampleSpec
    pipe = TextToImage(comps, SampleSpec(sampler=spec.sampler, steps=spec.steps,
                                         batch_size=b, height=spec.height,
                                         width=spec.width, dtype=spec.dtype,
                                         attention=spec.attention, mesh_shape=(1, 1, 1)),
                       devices=jax.devices()[:1])
    unet_cfg = comps.unet_config
    lh, lw = pipe.height // pipe.vae_factor, pipe.width // pipe.vae_factor
    x = jnp.ones((2 * b, lh, lw, unet_cfg.in_channels), jnp.float32)
    t = jnp.full((2 * b,), 500.0)
    ctx = unet_cond(comps, 2 * b, pipe)
    unet_fn = jax.jit(flat_unet_fn(unet_cfg, flat=False))
    params = pipe.params["unet"]
    _say(f"batch {b}: compiling the UNet call (CFG batch {2 * b}, {lh}x{lw} latents)")
    t0 = time.perf_counter()
    compiled_unet = unet_fn.lower(params, x, t, ctx).compile()
    unet_compile = time.perf_counter() - t0
    unet_plan = memory_parts(compiled_unet)
    unet_temp = unet_plan.get("temp_bytes")
    unet_planned = needed_bytes(unet_plan) or None
    _say(f"batch {b}: UNet call compiled in {unet_compile:.1f} s, planned temporaries "
         f"{unet_temp} bytes; counting FLOPs")
    xla_flops = unet_flops_xla(unet_cfg, params, x, t, ctx)
    analytic = jaxpr_flops(flat_unet_fn(unet_cfg), params, x, t, ctx)
    ours = lambda: compiled_unet(params, x, t, ctx).block_until_ready()  # noqa: E731
    theirs = (_diffusers_unet(comps, params, x, t, ctx, spec) if spec.vs == "diffusers"
              else None)
    _say(f"batch {b}: timing the UNet call" + (" against diffusers" if theirs else ""))
    if theirs is None:
        unet_s = _time(ours, spec.repeats)
    else:
        times = _interleaved({"ours": ours, "theirs": theirs[0]}, spec.repeats)
        unet_s = times["ours"]
    row = dict(batch=b, unet_call_s=unet_s, unet_compile_s=unet_compile,
               unet_flops_xla=xla_flops, unet_flops_analytic=analytic,
               mfu=(analytic / unet_s / peak) if peak else None, unet_temp_bytes=unet_temp,
               unet_planned_bytes=unet_planned)
    if theirs is not None:
        row.update(diffusers_unet_call_s=times["theirs"],
                   diffjax_over_diffusers=unet_s / times["theirs"],
                   torch_threads=theirs[1])
    if on_part is not None:
        on_part({**row, **peak_memory()})
    _say(f"batch {b}: compiling the {spec.steps}-step sample program")
    sample_compile = pipe.compile_seconds()
    plan = pipe.memory_plan()
    sample_temp = plan.get("temp_bytes")
    _say(f"batch {b}: sample program compiled in {sample_compile:.1f} s, planned "
         f"temporaries {sample_temp} bytes; timing it and the VAE decode")
    prompts, seeds = ["a benchmark prompt"] * b, list(range(b))
    sample_s = _time(lambda: pipe(prompts, seeds), spec.repeats)
    vae_s = _decode_time(pipe, b, lh, lw, spec.repeats)
    nfe = get_sampler(spec.sampler).nfe(spec.steps)
    row.update(sample_s=sample_s, sample_compile_s=sample_compile, vae_decode_s=vae_s,
               nfe=nfe, loop_overhead=(sample_s - vae_s) / (nfe * unet_s),
               images_per_s=b / sample_s, sample_temp_bytes=sample_temp,
               sample_planned_bytes=sum(plan.values()) or None)
    row.update(peak_memory())
    return row


def run_bench(spec: BenchSpec, on_result=None) -> dict:
    """The whole report. on_result(report so far) after each batch size, so that a run cut
    off later keeps what it measured. A batch size whose program XLA cannot build or run
    (e.g. out of device memory) becomes a row with its error; the others still run."""
    import jax

    from diffjax.weights.load import load
    comps = load(spec.model, spec.dtype, spec.attention)
    peak, peak_source = device_peak(spec.dtype)
    result = dict(device=jax.devices()[0].device_kind, backend=jax.default_backend(),
                  host=platform.node(), peak_flops=peak, peak_source=peak_source,
                  startup=None, spec=dataclasses.asdict(spec),
                  date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), rows=[])
    for b in spec.batch_sizes:
        part: dict = {}

        def on_part(row):  # the UNet call's figures, written before the sample's compile
            part.update(row)
            if on_result is not None:
                on_result({**result, "rows": result["rows"] + [row]})
        try:
            row = bench_batch(spec, comps, b, peak, on_part)
        except jax.errors.JaxRuntimeError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            where = "sample program" if part else "UNet call"
            _say(f"batch {b}: failed in the {where}: {first}")
            row = dict(part, batch=b, error=f"{where}: {first[:500]}")
        result["rows"].append(row)
        if on_result is not None:
            on_result(result)
    if spec.startup:
        result["startup"] = measure_startup(spec, spec.batch_sizes[0])
    return result


def _decode_time(pipe, b, lh, lw, repeats) -> float:
    import jax
    import jax.numpy as jnp

    from diffjax.models.vae import AutoencoderKL
    vae = AutoencoderKL(pipe.components.vae_config)
    z = jnp.ones((b, lh, lw, pipe.components.vae_config.latent_channels))
    f = jax.jit(lambda p, z: vae.apply({"params": p}, z, method=vae.decode))
    f(pipe.params["vae"], z).block_until_ready()
    return _time(lambda: f(pipe.params["vae"], z).block_until_ready(), repeats)


def _diffusers_unet(comps, params, x, t, ctx, spec):
    """(blocking call of diffusers' UNet2DConditionModel on the same weights, batch and
    precision, on the same kind of device as JAX's, torch's thread count); warmed up once.

    On a GPU both frameworks share the card: run with XLA_PYTHON_CLIENT_PREALLOCATE=false
    (or a smaller XLA_PYTHON_CLIENT_MEM_FRACTION) so that torch finds memory.
    """
    import diffusers
    import jax
    import torch

    from diffjax.weights.unet import unet_config_to_diffusers, unet_params_to_state_dict
    cfg = {k: v for k, v in unet_config_to_diffusers(comps.unet_config).items()
           if not k.startswith("_")}
    ref = diffusers.UNet2DConditionModel(**cfg).eval()
    ref.load_state_dict({k: torch.from_numpy(np.asarray(v, np.float32))
                         for k, v in unet_params_to_state_dict(params, comps.unet_config).items()})
    dt = torch.bfloat16 if spec.dtype == "bfloat16" else torch.float32
    on_gpu = jax.default_backend() == "gpu"
    if on_gpu and not torch.cuda.is_available():
        raise RuntimeError("JAX runs on a GPU but torch sees no CUDA device: a CPU-vs-GPU "
                           "ratio would mean nothing; install a CUDA build of torch")
    dev = torch.device("cuda" if on_gpu else "cpu")
    ref = ref.to(dev, dt)
    tx = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy()).to(dev, dt)
    tt = torch.from_numpy(np.asarray(t)).to(dev)
    to_t = lambda a: torch.from_numpy(np.asarray(a)).to(dev, dt)  # noqa: E731
    added = None
    if isinstance(ctx, dict):           # SDXL: added_cond_kwargs
        added = {"text_embeds": to_t(ctx["text_embeds"]), "time_ids": to_t(ctx["time_ids"])}
        ctx = ctx["context"]
    tc = to_t(ctx)
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)

    def call():
        with torch.inference_mode():
            ref(tx, tt, tc, added_cond_kwargs=added)
        sync()
    call()
    return call, torch.get_num_threads()


def markdown(result: dict) -> str:
    cols = ["batch", "unet_call_s", "sample_s", "vae_decode_s", "nfe", "loop_overhead",
            "images_per_s", "unet_compile_s", "sample_compile_s", "unet_flops_analytic",
            "unet_flops_xla", "mfu", "diffusers_unet_call_s", "diffjax_over_diffusers",
            "unet_temp_bytes", "sample_temp_bytes", "unet_planned_bytes",
            "sample_planned_bytes", "host_peak_rss_bytes",
            "device_peak_bytes"]
    cols = [c for c in cols if any(c in r for r in result["rows"])]
    fmt = lambda v: "-" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))  # noqa
    lines = [f"# diffjax bench — {result['spec']['model']} on {result['device']} "
             f"({result['backend']}), {result['date']}", "",
             f"peak FLOP/s: {fmt(result['peak_flops'])} ({result['peak_source']})", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in result["rows"]:
        lines.append("| " + " | ".join(fmt(r.get(c)) for c in cols) + " |")
    lines += [f"\nbatch {r['batch']} failed: {r['error']}" for r in result["rows"]
              if "error" in r]
    if result.get("startup"):
        lines += ["", "Fresh process, batch " + str(result["spec"]["batch_sizes"][0])
                  + " (seconds): " + ", ".join(f"{k} {fmt(v)}"
                                               for k, v in result["startup"].items())]
    return "\n".join(lines) + "\n"
