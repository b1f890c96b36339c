"""Size a sampling or training job for TPU slices before renting them: `diffjax plan`.

For each topology (`diffjax.tpu`) and each candidate (a mesh shape and a global batch
size) the job's program is built from abstract params (nothing is placed: the compile-only
client has no memory) and compiled for the slice's devices. What comes back:

- memory per device (XLA's plan: arguments + outputs - donated aliases + temporaries +
  program code) against the chip's HBM; a candidate that does not fit either exceeds
  that or fails to compile (the TPU compiler refuses programs that cannot fit);
- flops and bytes accessed per device and the TPU compiler's own time estimate
  (`cost_analysis()["optimal_seconds"]`), or where it has none (negative for SD-size
  programs in libtpu 0.0.42) a per-op roofline of the compiled program
  (`diffjax.hlo_roofline`), from which images/s per chip and a FLOP utilisation against
  the chip's peak follow. These are ESTIMATES from the compiler's output, never
  measurements, and are labelled so in every output.

The cost analysis of a program counts a loop's body once, whatever its trip count. A
sample program's estimate is therefore assembled from pieces: the whole program (text
encoder, the sampler's scan with the network calls traced in it, VAE decode) plus, for
every network call the scan repeats, one more compiled call of the guided network on the
program's batch (`network_call_program`). The calls traced in the program are counted
while tracing it (`count_network_calls`). A training step has no loop: its estimate is
its own.

Candidates are swept per topology and mesh with growing batch sizes; the first batch that
does not fit ends that mesh's sweep (memory grows with the batch). With `largest`, the
sweep then bisects for the largest batch that fits (`largest_fitting`). The recommendation
per topology is the fitting candidate with the most estimated images/s per chip.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
import typing

import jax
import jax.numpy as jnp

from diffjax import sharding, tpu
from diffjax.compiled_memory import memory_parts, needed_bytes
from diffjax.spec import ConfigError

ESTIMATE_LABEL = ("compiler estimate (the TPU compiler's cost analysis: its optimal_seconds, "
                  "or a per-op roofline of the compiled program), not a measurement")
MESH_KINDS = ("data", "fsdp", "tensor")


@dataclasses.dataclass(frozen=True)
class PlanSpec:
    """What to sweep. batch_sizes: global sizes (those the mesh's data axes do not divide
    are skipped); () = 1, 2, 4, 8, 16, 32 per data shard. meshes: kinds ("data" = all
    devices on the data axis, "fsdp" = all on fsdp, "tensor" = pairs of devices on the
    tensor axis, the rest data) or explicit "d,f,t" shapes."""

    topologies: tuple[str, ...]
    batch_sizes: tuple[int, ...] = ()
    meshes: tuple[str, ...] = ("data",)
    attention: str = ""       # "" = the config's ("auto" becomes XLA's on TPU)
    # after the sweep: keep doubling until a batch does not fit, then bisect between the
    # last that fits and the first that does not (`largest_fitting`)
    largest: bool = False


@dataclasses.dataclass
class Row:
    """One compiled candidate (all figures per device unless named per chip)."""

    topology: str
    chip: str
    devices: int
    chips: int
    mesh: tuple[int, int, int]
    batch_size: int
    status: str                       # "fits" | "exceeds HBM" | "does not compile"
    error: str = ""
    hbm_bytes: int = 0                # per device
    memory_bytes: int = 0             # per device, total of the plan below
    argument_bytes: int = 0
    output_bytes: int = 0
    alias_bytes: int = 0
    temp_bytes: int = 0
    code_bytes: int = 0
    flops: float = 0.0                # per device, per batch (loops counted in full)
    bytes_accessed: float = 0.0       # per device, per batch
    estimate_seconds: float = 0.0     # per batch (compiler estimate)
    # per-op roofline with every async copy waited for (the pessimistic end of the range)
    serial_seconds: float = 0.0
    flop_utilisation_serial: float = 0.0
    images_per_s_per_chip: float = 0.0
    flop_utilisation: float = 0.0     # flops / (estimate_seconds x peak per device)
    compile_seconds: float = 0.0      # wall time of this machine's compiles
    # sample jobs: one guided network call (the sampler's step) on its own
    network_flops: float = 0.0
    network_seconds: float = 0.0
    network_serial_seconds: float = 0.0
    network_utilisation: float = 0.0
    # "compiler": the TPU compiler's optimal_seconds; "per-op roofline": the sum over the
    # compiled program's ops of max(flops / peak, HBM bytes / bandwidth)
    # (diffjax.hlo_roofline), where optimal_seconds is negative
    estimate_source: str = "compiler"
    # per batch: the per-op roofline (copies overlapped) whatever the source, so a
    # compiler estimate can be compared with it
    roofline_seconds: float = 0.0
    notes: str = ""

    @property
    def fits(self) -> bool:
        return self.status == "fits"


# ----------------------------------------------------------------------------------------
def mesh_shape(kind: str, n_devices: int) -> tuple[int, int, int]:
    """A mesh kind or an explicit "d,f,t" as a ('data', 'fsdp', 'tensor') shape."""
    if kind == "data":
        return (n_devices, 1, 1)
    if kind == "fsdp":
        return (1, n_devices, 1)
    if kind == "tensor":
        if n_devices % 2:
            raise ConfigError(f"mesh 'tensor' pairs devices; {n_devices} is odd")
        return (n_devices // 2, 1, 2)
    try:
        shape = tuple(int(s) for s in kind.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or math.prod(shape) != n_devices or min(shape) < 1:
        raise ConfigError(f"mesh {kind!r}: expected one of {', '.join(MESH_KINDS)} or "
                          f"'d,f,t' sizes whose product is the slice's {n_devices} devices")
    return shape


def batch_sizes_for(spec: PlanSpec, data_ways: int) -> list[int]:
    if spec.batch_sizes:
        return sorted(b for b in set(spec.batch_sizes) if b % data_ways == 0)
    return [data_ways * k for k in (1, 2, 4, 8, 16, 32)]


def memory_refusal(status: str, error: str) -> bool:
    """Did a candidate not fit for lack of memory (rather than fail for another reason,
    which says nothing about larger or smaller batches)?"""
    return status == "exceeds HBM" or (status == "does not compile"
                                       and "RESOURCE_EXHAUSTED" in error)


def largest_fitting(fits, fitting: int, refused: int, step: int) -> int:
    """The largest multiple of `step` that fits, between `fitting` (fits) and `refused`
    (a larger batch that does not), by bisection: `fits(batch)` compiles one candidate and
    says True, False, or None where it failed for a reason other than memory (the search
    stops there, returning what it has). Assumes memory does not shrink as the batch grows
    (it is flat in places: apparently the compiler plans programs near HBM more tightly), so
    one fitting batch vouches for all below it. A refused candidate fails in the compiler's
    memory check, before code generation: the bisection's refusals are cheap, its fits
    cost a full compile each."""
    if fitting % step or refused % step or not 0 < fitting < refused:
        raise ValueError(f"largest_fitting: expected multiples of {step} with "
                         f"0 < fitting < refused, got {fitting} and {refused}")
    lo, hi = fitting // step, refused // step
    while hi - lo > 1:
        mid = (lo + hi) // 2
        answer = fits(mid * step)
        if answer is None:
            break
        lo, hi = (mid, hi) if answer else (lo, mid)
    return lo * step


def fit_bounds(rows: list[dict]) -> dict[tuple, tuple[int, int]]:
    """Per (topology, mesh): (the largest batch compiled that fits, the smallest batch
    refused for memory), 0 where there is none."""
    bounds: dict[tuple, tuple[int, int]] = {}
    for r in rows:
        key = (r["topology"], tuple(r["mesh"]))
        good, bad = bounds.get(key, (0, 0))
        if r["status"] == "fits":
            good = max(good, r["batch_size"])
        elif memory_refusal(r["status"], r["error"]):
            bad = min(bad, r["batch_size"]) if bad else r["batch_size"]
        bounds[key] = (good, bad)
    return bounds


def memory_of(compiled) -> dict:
    """XLA's per-device memory plan of a compiled program (bytes): its parts and what it
    needs in all (`memory_bytes`), by `compiled_memory`'s rule."""
    parts = memory_parts(compiled)
    if not parts:       # a candidate with no plan must not read as "fits" (0 bytes)
        raise ValueError("the compiler gave no memory analysis for this program")
    return {**parts, "memory_bytes": needed_bytes(parts)}


def cost_of(compiled) -> dict:
    """flops, bytes accessed and the compiler's time estimate of one run (per device)."""
    c = compiled.cost_analysis()
    c = (c[0] if c else {}) if isinstance(c, (list, tuple)) else (c or {})
    return {"flops": float(c.get("flops", 0.0)),
            "bytes_accessed": float(c.get("bytes accessed", 0.0)),
            "seconds": float(c.get("optimal_seconds", -1.0))}


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    for line in text.splitlines():
        if line.strip():
            return f"{type(e).__name__}: {line.strip()}"[:300]
    return type(e).__name__


# ----------------------------------------------------------------------------------------
@contextlib.contextmanager
def count_network_calls():
    """Counts UNet calls while a program is traced: the calls its compiled form holds once
    each (a scan's body is traced once). Yields a list whose length is the count, of each
    call's input shape (rows first). Initialisations are not calls: lowering a pipeline
    traces the UNet's init on a tiny example input the first time it reads the params'
    inference dtypes (`models.inference_dtypes`), which must not be taken for the
    sampler's step."""
    import flax.linen as nn

    from diffjax.models.unet import UNet2DConditionModel
    calls: list[tuple] = []

    def interceptor(next_fun, args, kwargs, context):
        if isinstance(context.module, UNet2DConditionModel) and \
                context.method_name == "__call__" and \
                not context.module.is_initializing() and \
                not isinstance(context.module.parent, nn.Module):   # the top-level call
            calls.append(tuple(getattr(args[0], "shape", ())))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        yield calls


def network_call_program(pipe, seeds: int, rows: int):
    """One network call of the sampler's step, lowered from shapes with the pipeline's
    shardings: the UNet on `rows` rows (2 with CFG) per seed, vmapped over `seeds` as the
    sample program's scan runs it (split over the data axes the same way). The piece the
    scan repeats."""
    from diffjax import sharding
    _, unet, _ = pipe._modules()   # noqa: SLF001 - the pipeline's own module choice
    uc = pipe.components.unet_config
    mesh = pipe.mesh
    sh = lambda nd: sharding.batch_sharding(mesh, nd)  # noqa: E731
    params = pipe.abstract_params()["unet"]
    h, w, _ = pipe.latent_shape
    dtype = jnp.dtype(uc.dtype)
    x = jax.ShapeDtypeStruct((seeds, rows, h, w, uc.in_channels), jnp.float32,
                             sharding=sh(5))
    t = jax.ShapeDtypeStruct((seeds, rows), jnp.float32, sharding=sh(2))
    ctx = jax.ShapeDtypeStruct((seeds, rows, pipe.tokenizer.max_length,
                                uc.cross_attention_dim), dtype, sharding=sh(4))
    added = None
    if getattr(uc, "addition_embed_type", None) == "text_time":
        n_time = pipe.time_ids[0].shape[0]
        pooled = uc.projection_class_embeddings_input_dim - n_time * uc.addition_time_embed_dim
        added = {"text_embeds": jax.ShapeDtypeStruct((seeds, rows, pooled), dtype,
                                                     sharding=sh(3)),
                 "time_ids": jax.ShapeDtypeStruct((seeds, rows, n_time), jnp.float32,
                                                  sharding=sh(3))}

    def call(p, x, t, ctx, added):
        def one(x, t, ctx, added):
            kwargs = {} if added is None else {"added_cond": added}
            return unet.apply({"params": p}, x, t, ctx, **kwargs)
        return jax.vmap(one, spmd_axis_name=pipe._seed_axes())(x, t, ctx, added)  # noqa: SLF001
    with pipe._mesh_context():   # noqa: SLF001
        return jax.jit(call).lower(params, x, t, ctx, added)


def device_peak(chip: tpu.Chip, row: Row) -> tuple[float, float]:
    """(peak bf16 FLOP/s, HBM bytes/s) of one device of the slice (a v4 device is half a
    chip)."""
    share = row.chips / row.devices
    return chip.peak_bf16_flops * share, chip.hbm_bytes_per_s * share


def program_estimate(compiled, chip: tpu.Chip, row: Row) -> dict:
    """flops, bytes and seconds of one run of a compiled program, per device, and where
    the seconds come from: the TPU compiler's `optimal_seconds` where it gives one
    ("compiler"), else the per-op roofline of the program's HLO (`diffjax.hlo_roofline`,
    "per-op roofline"; libtpu 0.0.42 returns negative seconds for SD-size programs on
    v5e and v6e). The roofline's seconds are kept in either case ("roofline_seconds").

    flops are the roofline's count of the program's matmul work (checked against analytic
    counts: it is what its seconds are made of); XLA's cost-analysis count is kept as
    "xla_flops"."""
    from diffjax.hlo_roofline import Roofline
    cost = cost_of(compiled)
    peak, bandwidth = device_peak(chip, row)
    summary = Roofline(compiled.as_text(), peak, bandwidth).summary()
    cost["xla_flops"], cost["flops"] = cost["flops"], summary["matmul_flops"]
    cost["roofline_seconds"] = summary["seconds"]
    if cost["seconds"] > 0:
        cost["source"], cost["serial_seconds"] = "compiler", cost["seconds"]
    else:
        cost["seconds"], cost["serial_seconds"] = summary["seconds"], summary["serial_seconds"]
        cost["source"] = "per-op roofline"
    return cost


def _estimate(row: Row, chip: tpu.Chip, flops: float, bytes_accessed: float,
              seconds: float, source: str, serial_seconds: float = 0.0,
              roofline_seconds: float = 0.0) -> None:
    row.flops, row.bytes_accessed, row.estimate_seconds = flops, bytes_accessed, seconds
    row.serial_seconds = serial_seconds or seconds
    row.roofline_seconds = roofline_seconds
    row.estimate_source = source
    if seconds > 0:
        peak, _ = device_peak(chip, row)
        row.images_per_s_per_chip = row.batch_size / seconds / row.chips
        row.flop_utilisation = flops / (seconds * peak)
        row.flop_utilisation_serial = flops / (row.serial_seconds * peak)


def _fit(row: Row, compiled) -> None:
    for k, v in memory_of(compiled).items():
        setattr(row, k, v)
    row.status = "fits" if row.memory_bytes <= row.hbm_bytes else "exceeds HBM"


def plan_sample_candidate(components, spec, row: Row, devices, chip: tpu.Chip,
                          progress=lambda message: None) -> Row:
    """Compile a sample job's program (and its network call) for one candidate."""
    from diffjax.diffusion.samplers import get_sampler
    from diffjax.pipeline import TextToImage
    t0 = time.perf_counter()
    try:
        pipe = TextToImage(components, spec, devices=devices)
        with count_network_calls() as calls:
            lowered = pipe.lower()
        compiled = lowered.compile()
    except Exception as e:  # the TPU compiler's refusal (out of HBM, ...) is the answer
        row.status, row.error = "does not compile", first_line(e)
        row.compile_seconds = time.perf_counter() - t0
        return row
    _fit(row, compiled)
    whole = program_estimate(compiled, chip, row)
    nfe = get_sampler(spec.sampler).nfe(spec.steps)
    repeats = max(nfe - len(calls), 0)
    flops, nbytes, seconds = whole["flops"], whole["bytes_accessed"], whole["seconds"]
    serial, roofline = whole["serial_seconds"], whole["roofline_seconds"]
    sources = {whole["source"]}
    if repeats and row.fits:
        # traced inside the vmap over seeds: rows per seed (2 with CFG) x the batch
        rows = calls[0][0] if calls and calls[0] else 1
        progress(f"    sample program compiled ({time.perf_counter() - t0:.0f} s); "
                 "compiling the network call its scan repeats ...")
        call = program_estimate(network_call_program(pipe, row.batch_size, rows).compile(),
                                chip, row)
        sources.add(call["source"])
        row.network_flops, row.network_seconds = call["flops"], call["seconds"]
        row.network_serial_seconds = call["serial_seconds"]
        row.network_utilisation = call["flops"] / (call["seconds"] * device_peak(chip, row)[0])
        flops += repeats * call["flops"]
        nbytes += repeats * call["bytes_accessed"]
        seconds += repeats * call["seconds"]
        serial += repeats * call["serial_seconds"]
        roofline += repeats * call["roofline_seconds"]
    row.compile_seconds = time.perf_counter() - t0
    _estimate(row, chip, flops, nbytes, seconds, " + ".join(sorted(sources)), serial,
              roofline)
    return row


def plan_train_candidate(run, components, row: Row, devices, chip: tpu.Chip) -> Row:
    """Compile the UNet train step of `run` (batch = data.batch_size) for one candidate."""
    from diffjax import sharding
    from diffjax.train.unet_trainer import lower_unet_step
    t0 = time.perf_counter()
    try:
        mesh = sharding.make_mesh(row.mesh, devices)
        compiled = lower_unet_step(run, components, mesh).compile()
    except Exception as e:
        row.status, row.error = "does not compile", first_line(e)
        row.compile_seconds = time.perf_counter() - t0
        return row
    _fit(row, compiled)
    cost = program_estimate(compiled, chip, row)
    row.compile_seconds = time.perf_counter() - t0
    _estimate(row, chip, cost["flops"], cost["bytes_accessed"], cost["seconds"],
              cost["source"], cost["serial_seconds"], cost["roofline_seconds"])
    return row


# ----------------------------------------------------------------------------------------
def run_plan(job, plan: PlanSpec, progress=print, on_row=lambda result: None) -> dict:
    """Sweep `plan` for `job`: ("sample", components, SampleSpec) or ("train", components,
    UNetRun). Returns the result as plain data (rows, recommendations, labels);
    `on_row(result so far)` after every candidate (a sweep takes minutes per candidate:
    what is done is kept if it stops)."""
    kind, components, spec = job
    rows: list[Row] = []
    for topology in plan.topologies:
        chip = tpu.chip_of(topology)
        devices = tpu.topology_devices(topology)
        n, chips = len(devices), tpu.chip_count(devices)
        hbm = tpu.hbm_per_device(topology, devices)
        for mesh_kind in plan.meshes:
            shape = mesh_shape(mesh_kind, n)
            data_ways = sharding.data_ways(shape)
            sizes = batch_sizes_for(plan, data_ways)
            if not sizes:
                progress(f"{topology} mesh {shape}: no batch size divisible by {data_ways}")

            def candidate(b: int) -> Row:
                row = Row(topology, chip.name, n, chips, shape, b, "", hbm_bytes=hbm)
                progress(f"[{topology} mesh {'x'.join(map(str, shape))} batch {b}] "
                         "compiling ...")
                if kind == "sample":
                    s = dataclasses.replace(spec, batch_size=b, mesh_shape=shape)
                    plan_sample_candidate(components, s, row, devices, chip, progress)
                else:
                    r = dataclasses.replace(spec, data=dataclasses.replace(spec.data,
                                                                           batch_size=b))
                    plan_train_candidate(r, components, row, devices, chip)
                rows.append(row)
                progress("    " + progress_line(row))
                on_row(result_dict(kind, components, spec, plan, rows))
                return row

            _sweep(candidate, sizes, data_ways, plan.largest, progress)
    return result_dict(kind, components, spec, plan, rows)


def _sweep(candidate, sizes: list[int], data_ways: int, largest: bool, progress) -> None:
    """Compile `sizes` in order until one does not fit; with `largest`, go on doubling
    past the last size until one is refused for memory (at most 4096 per data shard),
    then bisect for the largest batch that fits."""
    fitting = refused = 0
    queue = list(sizes)
    while queue:
        b = queue.pop(0)
        row = candidate(b)
        if not row.fits:
            refused = b if memory_refusal(row.status, row.error) else 0
            break
        fitting = b
        if largest and not queue and b < 4096 * data_ways:
            queue.append(2 * b)
    if not (largest and fitting and refused):
        return

    def fits(b: int):
        row = candidate(b)
        return True if row.fits else (False if memory_refusal(row.status, row.error)
                                      else None)

    best = largest_fitting(fits, fitting, refused, data_ways)
    progress(f"    largest batch found that fits: {best}")


def progress_line(row: Row) -> str:
    if row.status == "does not compile":
        return f"does not compile ({row.error}) [{row.compile_seconds:.0f} s]"
    est = (f", estimate {row.estimate_seconds:.3g} s/batch, "
           f"{row.images_per_s_per_chip:.3g} img/s/chip, "
           f"{_utilisation(dataclasses.asdict(row))} of peak"
           if row.estimate_seconds > 0 else "")
    return (f"{row.status}: {row.memory_bytes / tpu.GiB:.2f} of {row.hbm_bytes / tpu.GiB:.0f} "
            f"GiB per device{est} [compiled in {row.compile_seconds:.0f} s]")


def recommend(rows: list[Row]) -> dict[str, Row | None]:
    """Per topology: the fitting row with the most estimated images/s per chip (ties: the
    smaller batch)."""
    best: dict[str, Row | None] = {}
    for row in rows:
        best.setdefault(row.topology, None)
        if row.fits and row.estimate_seconds > 0:
            cur = best[row.topology]
            if cur is None or (row.images_per_s_per_chip, -row.batch_size) > \
                    (cur.images_per_s_per_chip, -cur.batch_size):
                best[row.topology] = row
    return best


def result_dict(kind, components, spec, plan: PlanSpec, rows: list[Row]) -> dict:
    from diffjax import __version__
    best = recommend(rows)
    job = dataclasses.asdict(spec) if dataclasses.is_dataclass(spec) else str(spec)
    return {
        "kind": kind, "model": components.name, "job": job,
        "plan": dataclasses.asdict(plan), "jax": jax.__version__, "diffjax": __version__,
        "estimates": ESTIMATE_LABEL,
        "chips": {name: dataclasses.asdict(c) for name, c in tpu.CHIPS.items()},
        "rows": [dataclasses.asdict(r) for r in rows],
        "recommended": {t: (None if r is None else rows.index(r)) for t, r in best.items()},
    }


def markdown(result: dict) -> str:
    """The table and the recommendations."""
    gib = tpu.GiB
    steps = result["job"].get("steps", "") if isinstance(result["job"], dict) else ""
    lines = [f"# diffjax plan: {result['kind']} `{result['model']}`"
             + (f", {steps} steps" if steps and result["kind"] == "sample" else ""), "",
             f"Time, images/s and utilisation are the **{ESTIMATE_LABEL}**. Memory is "
             "XLA's plan per device (arguments + outputs - donated + temporaries + code). "
             "A per-op roofline is an optimistic bound (each op at its own peak); where it "
             "gives a range (a-b%), a waits for every async copy and b overlaps them.",
             "",
             "| topology | mesh (d,f,t) | batch | status | memory / device | HBM / device "
             "| TFLOP / device | GB accessed / device | est. s / batch | est. img/s / chip "
             "| est. FLOP util. | compile s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        est = r["estimate_seconds"] > 0
        mem = f"{r['memory_bytes'] / gib:.2f} GiB" if r["memory_bytes"] else "-"
        status = r["status"] + (f" ({r['error']})" if r["error"] else "")
        lines.append(
            f"| {r['topology']} | {','.join(map(str, r['mesh']))} | {r['batch_size']} | "
            f"{status} | {mem} | {r['hbm_bytes'] / gib:.0f} GiB | "
            f"{r['flops'] / 1e12:.2f} | {r['bytes_accessed'] / 1e9:.1f} | "
            f"{r['estimate_seconds']:.3g} ({_source(r)}) | "
            + (f"{r['images_per_s_per_chip']:.3g} | {_utilisation(r)} | " if est
               else "- | - | ")
            + f"{r['compile_seconds']:.0f} |")
    lines.append("")
    for (topology, mesh), (good, bad) in fit_bounds(result["rows"]).items():
        if good and bad:
            what = ("the largest batch that fits" if bad - good == sharding.data_ways(mesh)
                    else "the largest batch compiled that fits")
            lines.append(f"- **{topology}**, mesh {','.join(map(str, mesh))}: {what} is "
                         f"{good}; {bad} does not fit.")
    for topology, index in result["recommended"].items():
        if index is None:
            lines.append(f"- **{topology}**: no candidate fits (or none has an estimate).")
            continue
        r = result["rows"][index]
        lines.append(
            f"- **{topology}**: recommended mesh {','.join(map(str, r['mesh']))}, batch "
            f"{r['batch_size']}: {r['memory_bytes'] / gib:.2f} of {r['hbm_bytes'] / gib:.0f} "
            f"GiB per device, {r['images_per_s_per_chip']:.3g} images/s per chip and "
            f"{_utilisation(r)} FLOP utilisation ({ESTIMATE_LABEL}).")
    return "\n".join(lines) + "\n"


def _utilisation(r: dict) -> str:
    """"97%", or where async copies make a range, "54-97%" (copies waited for - copies
    overlapped)."""
    hi, lo = 100 * r["flop_utilisation"], 100 * r.get("flop_utilisation_serial", 0.0)
    return f"{hi:.0f}%" if not lo or round(lo) == round(hi) else f"{lo:.0f}-{hi:.0f}%"


def _source(r: dict) -> str:
    """Where a row's seconds come from, with the per-op roofline beside a compiler
    estimate ("compiler; roofline 0.28")."""
    src, roofline = r["estimate_source"], r.get("roofline_seconds", 0.0)
    if "compiler" in src and roofline > 0:
        return f"{src}; roofline {roofline:.3g}"
    return src


def to_json(result: dict) -> str:
    return json.dumps(result, indent=2, default=str)


# ----------------------------------------------------------------------------------------
def job_from_config(config, attention: str = "") -> tuple[str, typing.Any, typing.Any]:
    """A sample config (`diffjax.configs.sample`) or a UNet train config
    (`diffjax.configs.train.unet`) as ("sample" | "train", components, spec). Presets are
    built from their configs alone (no weights); other models are loaded."""
    from diffjax.weights.components import PRESET_MODELS, preset_components
    from diffjax.weights.load import load
    if "trainer" in config:
        from diffjax.train.spec import UNetRun, run_spec
        if config.trainer != "unet":
            raise ConfigError(f"plan sizes sample jobs and the UNet trainer; trainer "
                              f"{config.trainer!r} is not planned")
        run = run_spec(config, UNetRun)
        name, dtype, att = run.model.name, "float32", attention or "xla"
        comps = (preset_components(name, dtype=dtype, attention=att, weights=False)
                 if name in PRESET_MODELS else load(name, dtype, att))
        return "train", comps, run
    from diffjax.sample_spec import spec_from_config
    spec = spec_from_config(config)
    att = attention or spec.attention
    spec = dataclasses.replace(spec, attention=att)
    name = config.model
    comps = (preset_components(name, dtype=spec.dtype, attention=att, weights=False)
             if name in PRESET_MODELS else load(name, spec.dtype, att))
    return "sample", comps, spec
