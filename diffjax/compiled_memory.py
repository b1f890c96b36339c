"""What a compiled program needs on one device, from XLA's memory plan: the one rule that
`diffjax sample`'s preflight, `diffjax bench` and `diffjax plan` all size a batch by.

XLA counts buffers an output reuses from an argument (donation) in both, so they are
subtracted once; the program's own code is loaded beside its buffers."""

from __future__ import annotations


def memory_parts(compiled) -> dict:
    """Bytes per device of a compiled executable's arguments, outputs, argument-output
    aliases, temporaries and generated code; empty where the backend gives no analysis."""
    m = compiled.memory_analysis()
    if m is None:
        return {}
    return {"argument_bytes": int(m.argument_size_in_bytes),
            "output_bytes": int(m.output_size_in_bytes),
            "alias_bytes": int(m.alias_size_in_bytes),
            "temp_bytes": int(m.temp_size_in_bytes),
            "code_bytes": int(m.generated_code_size_in_bytes)}


def needed_bytes(parts: dict) -> int:
    """Bytes per device the program needs while it runs (0 where there is no plan)."""
    if not parts:
        return 0
    return (parts["argument_bytes"] + parts["output_bytes"] - parts["alias_bytes"]
            + parts["temp_bytes"] + parts["code_bytes"])


def programs_in_turn(a: dict, b: dict) -> dict:
    """Two programs run one after the other with both kept loaded (SDXL base then refiner):
    both params stay on the devices and both codes loaded (arguments, aliases and code add
    up), the first's outputs are alive during the second's run (outputs add), temporaries
    are the larger. Empty if either has no plan."""
    if not a or not b:
        return {}
    return {key: (max(a[key], b[key]) if key == "temp_bytes" else a[key] + b[key])
            for key in a}
