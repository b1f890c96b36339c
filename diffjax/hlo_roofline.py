"""A per-op roofline of a compiled TPU program, read from its optimized HLO text.

`diffjax plan` needs a time estimate per compiled program. The TPU compiler's own
(`cost_analysis()["optimal_seconds"]`) is negative for SD-size programs in libtpu 0.0.42,
and the whole-program roofline max(total flops / peak, total bytes / bandwidth) assumes
every byte moves while the MXU is busy: a UNet call whose totals sit just above the ridge
point comes out at 100% of peak although its norms and elementwise ops stream through HBM
with the MXU idle. This estimate instead charges each top-level op of the program
(a fusion, a convolution, a Mosaic kernel, a copy) its own roofline,
max(op flops / peak, op HBM bytes / bandwidth), and sums them: ops do not overlap, the
compute-bound ones run at peak and the memory-bound ones at full bandwidth. It is still an
optimistic bound (no op reaches peak), but it charges memory-bound ops their time.

What counts:
- flops: matmul-unit work only, 2 x output elements x contraction length of every
  convolution and dot (inside fusions too), plus the `cost_estimate` a Pallas kernel
  declares in its backend config; elementwise arithmetic is left to the bytes bound.
- HBM bytes: the operands and results of each top-level op, except buffers placed in
  on-chip memory (a layout with a memory space `S(n)`, n >= 1: VMEM, SMEM) and ops that
  move nothing (parameters, tuples, bitcasts, the `-done` halves of async pairs).
- async copies (`copy-start`, prefetches into VMEM) overlap the other ops: their bytes
  count only towards the total that the bandwidth bounds;
- a while loop's body once, as XLA's cost analysis counts it (the plan multiplies the
  network call by the scan's trip count itself); a conditional's most expensive branch.
  A loop body can also be estimated alone (`loop_bodies`, `summary(body)`): the sampler
  scan's body is one step, the network call in the context of the whole program.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re

DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "s16": 2, "u16": 2,
               "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8,
               "f64": 8, "c64": 8, "c128": 16}
# One array type in HLO text: dtype[dims]{layout}, the layout optional.
_ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([\d,]*)\](\{[^{}]*(?:\([^)]*\)[^{}]*)*\})?")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*(.+?)\s+([\w\-]+)\((.*)$")
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%([\w.\-]+)\s.*\{\s*$")
# Ops that read or write no HBM of their own.
FREE_OPS = {"parameter", "constant", "tuple", "get-tuple-element", "bitcast",
            "after-all", "partition-id", "replica-id", "iota"}


@dataclasses.dataclass
class Instruction:
    name: str
    type: str            # the result type text
    opcode: str
    operands: list[str]
    attributes: str


@dataclasses.dataclass
class OpCost:
    flops: float = 0.0
    hbm_bytes: float = 0.0
    overlapped: bool = False     # an async copy: runs beside the other ops


def array_bytes(type_text: str, hbm_only: bool = True) -> int:
    """Bytes of the arrays in a type (a tuple counts each element); with hbm_only the
    ones whose layout names an on-chip memory space (S(1) and up) are left out."""
    total = 0
    for dtype, dims, layout in _ARRAY.findall(type_text):
        if dtype not in DTYPE_BYTES:
            continue
        if hbm_only and layout and re.search(r"S\([1-9]\d*\)", layout):
            continue
        total += math.prod(int(d) for d in dims.split(",") if d) * DTYPE_BYTES[dtype]
    return total


def _dims(type_text: str) -> list[int]:
    m = _ARRAY.search(type_text)
    return [int(d) for d in m.group(2).split(",") if d] if m else []


def _split_operands(text: str) -> tuple[list[str], str]:
    """The operand names of an instruction's argument list and the attributes after it."""
    depth, i = 1, 0
    while i < len(text) and depth:
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        i += 1
    return re.findall(r"%([\w.\-]+)", text[:i - 1]), text[i:]


def parse(hlo_text: str) -> tuple[dict[str, list[Instruction]], str]:
    """{computation name: its instructions} and the entry computation's name."""
    computations: dict[str, list[Instruction]] = {}
    entry, current = "", None
    for line in hlo_text.splitlines():
        if current is None:
            m = _COMPUTATION.match(line)
            if m:
                current = computations.setdefault(m.group(1), [])
                if line.startswith("ENTRY"):
                    entry = m.group(1)
            continue
        if line.strip() == "}":
            current = None
            continue
        m = _INSTRUCTION.match(line)
        if m:
            operands, attributes = _split_operands(m.group(4))
            current.append(Instruction(m.group(1), m.group(2), m.group(3), operands,
                                       attributes))
    if not entry:
        raise ValueError("no ENTRY computation in the HLO text")
    return computations, entry


def _called(inst: Instruction, key: str) -> list[str]:
    m = re.search(key + r"=\{?([^,}]*(?:,\s*%[\w.\-]+)*)\}?", inst.attributes)
    return re.findall(r"%([\w.\-]+)", m.group(1)) if m else []


def _matmul_flops(inst: Instruction, types: dict[str, str]) -> float:
    """2 x output elements x contraction length of a convolution or dot."""
    out = math.prod(_dims(inst.type))
    if inst.opcode == "dot":
        lhs = _dims(types.get(inst.operands[0], ""))
        m = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", inst.attributes)
        contract = [int(d) for d in m.group(1).split(",") if d] if m else []
        return 2.0 * out * math.prod(lhs[d] for d in contract if d < len(lhs))
    lhs = _dims(types.get(inst.operands[0], ""))
    kernel = _dims(types.get(inst.operands[1], "")) if len(inst.operands) > 1 else []
    m = re.search(r"dim_labels=(\w+)_(\w+)->", inst.attributes)
    if not lhs or not kernel or not m or "i" not in m.group(2):
        return 0.0
    # Contraction: input features x the window taps that land on input elements. XLA
    # writes matmuls as convolutions whose extra dims are windows that mostly hit padding
    # (a dense layer's heads: a window of 8 over an input extent of 1) or the holes of an
    # lhs-dilated input (attention's batched einsums): per window dim at most
    # min(size, input extent, size / dilation) taps are real.
    lhs_labels = m.group(1)
    window = re.search(r"size=([\dx]+)", inst.attributes)
    sizes = [int(v) for v in window.group(1).split("x")] if window else []
    dilate = re.search(r"lhs_dilate=([\dx]+)", inst.attributes)
    dilations = [int(v) for v in dilate.group(1).split("x")] if dilate else [1] * len(sizes)
    taps = 1
    for k, (size, d) in enumerate(zip(sizes, dilations)):
        extent = lhs[lhs_labels.index(str(k))] if str(k) in lhs_labels else size
        taps *= min(size, extent, -(-size // d))
    return 2.0 * out * kernel[m.group(2).index("i")] * taps


def _kernel_flops(inst: Instruction) -> float:
    """The flops a Pallas (Mosaic) kernel declares (`cost_estimate` in its config)."""
    m = re.search(r'"cost_estimate":(\{[^}]*\})', inst.attributes)
    if not m:
        return 0.0
    try:
        return float(json.loads(m.group(1)).get("flops", 0))
    except (ValueError, TypeError):
        return 0.0


class Roofline:
    """Per-op roofline seconds of one compiled program on one chip."""

    def __init__(self, hlo_text: str, peak_flops: float, hbm_bytes_per_s: float):
        self.computations, self.entry = parse(hlo_text)
        self.peak, self.bandwidth = peak_flops, hbm_bytes_per_s
        self._flops_cache: dict[str, float] = {}

    def computation_flops(self, name: str) -> float:
        """Matmul flops of a computation and everything it calls (a fusion's body)."""
        if name not in self._flops_cache:
            self._flops_cache[name] = 0.0        # recursion guard
            insts = self.computations.get(name, [])
            types = {i.name: i.type for i in insts}
            total = 0.0
            for inst in insts:
                if inst.opcode in ("convolution", "dot"):
                    total += _matmul_flops(inst, types)
                elif inst.opcode == "custom-call":
                    total += _kernel_flops(inst)
                for callee in _called(inst, "calls"):
                    total += self.computation_flops(callee)
            self._flops_cache[name] = total
        return self._flops_cache[name]

    def op_costs(self, name: str | None = None) -> list[OpCost]:
        """One OpCost per top-level op of a computation (the entry by default), loops'
        bodies and conditionals' branches expanded in place."""
        insts = self.computations[name or self.entry]
        types = {i.name: i.type for i in insts}
        costs: list[OpCost] = []
        for inst in insts:
            if inst.opcode in FREE_OPS or inst.opcode.endswith("-done"):
                continue
            if inst.opcode == "while":
                for body in _called(inst, "body"):
                    costs.extend(self.op_costs(body))
                continue
            if inst.opcode == "conditional":
                branches = [self.op_costs(b) for b in _called(inst, "branch_computations")
                            or _called(inst, "true_computation")
                            + _called(inst, "false_computation")]
                if branches:
                    costs.extend(max(branches, key=lambda c: self.seconds_of(c)))
                continue
            if inst.opcode == "call":
                for callee in _called(inst, "to_apply"):
                    costs.extend(self.op_costs(callee))
                continue
            reads = sum(array_bytes(types.get(o, "")) for o in inst.operands)
            written = array_bytes(inst.type)
            if inst.opcode.endswith("-start"):       # async: the moved buffer once
                written = array_bytes(_first_element(inst.type))
                costs.append(OpCost(0.0, float(reads + written), overlapped=True))
                continue
            flops = 0.0
            if inst.opcode in ("convolution", "dot"):
                flops = _matmul_flops(inst, types)
            elif inst.opcode == "custom-call":
                flops = _kernel_flops(inst)
            for callee in _called(inst, "calls"):
                flops += self.computation_flops(callee)
            costs.append(OpCost(flops, float(reads + written)))
        return costs

    def seconds_of(self, costs: list[OpCost]) -> float:
        """The ops one after another, each at its own roofline; async copies run beside
        them and cost time only where all the bytes together need longer."""
        serial = sum(max(c.flops / self.peak, c.hbm_bytes / self.bandwidth)
                     for c in costs if not c.overlapped)
        return max(serial, sum(c.hbm_bytes for c in costs) / self.bandwidth)

    def loop_bodies(self, name: str | None = None) -> list[str]:
        """The bodies of the while loops a computation (the entry by default) runs, nested
        ones after their parent, in program order."""
        bodies = []
        for inst in self.computations[name or self.entry]:
            if inst.opcode == "while":
                for body in _called(inst, "body"):
                    bodies += [body, *self.loop_bodies(body)]
            for callee in _called(inst, "to_apply") if inst.opcode == "call" else []:
                bodies += self.loop_bodies(callee)
        return bodies

    def summary(self, name: str | None = None) -> dict:
        """Of a computation (the entry by default: the whole program; or a loop body):
        seconds (the per-op roofline, async copies overlapped: the optimistic end),
        serial_seconds (every copy waited for: the pessimistic end), matmul flops, HBM
        bytes, and the seconds of the ops bound by bandwidth (what keeps the estimate from
        peak)."""
        costs = self.op_costs(name)
        memory_bound = [c for c in costs if not c.overlapped
                        and c.hbm_bytes / self.bandwidth > c.flops / self.peak]
        return {"seconds": self.seconds_of(costs),
                "serial_seconds": self.seconds_of(
                    [dataclasses.replace(c, overlapped=False) for c in costs]),
                "matmul_flops": sum(c.flops for c in costs),
                "hbm_bytes": sum(c.hbm_bytes for c in costs),
                "memory_bound_seconds": self.seconds_of(memory_bound),
                "ops": len(costs)}


def _first_element(type_text: str) -> str:
    """The first array of a tuple type (an async start's destination buffer)."""
    m = _ARRAY.search(type_text)
    return m.group(0) if m else ""
