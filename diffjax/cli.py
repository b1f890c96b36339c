"""The `diffjax` command: sample | train | data | compare | convert | bench | samplers | info.

Each subcommand lives in its own module that exposes `add_arguments(parser)` and
`run(args) -> int`; this file only maps names to those modules (an explicit dict, imported
lazily so `diffjax --help` does not import jax). Commands that take a config accept
`--config` naming a packaged config (`diffjax.configs.sample:steps=30`), a config file
(`path.py[:args]`) or a saved `config.json`, and any number of `--config.key=value`
overrides; unknown keys fail naming the closest valid ones.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# name -> (module implementing add_arguments/run, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "sample": ("diffjax.commands.sample", "text-to-image sampling, one prompt or a prompt file"),
    "train": ("diffjax.commands.train", "train a UNet from a config (resumable workdir)"),
    "data": ("diffjax.commands.data", "build datasets: procedural shapes, image folders"),
    "compare": ("diffjax.commands.compare", "sampler comparison grid: quality vs NFE"),
    "convert": ("diffjax.commands.convert", "diffusers folder <-> diffjax checkpoint"),
    "bench": ("diffjax.commands.bench", "throughput, compile time and FLOP utilisation"),
    "samplers": ("diffjax.commands.samplers", "list every sampler: NFE, order, reference"),
    "plan": ("diffjax.commands.plan", "size a job for TPU slices: compile, memory, estimates"),
    "info": ("diffjax.commands.info", "versions, backend, devices and the mesh a config builds"),
    "evaluate": ("diffjax.commands.evaluate", "FID, KID, FD-DINOv2, CLIP score of a caption set; gates"),
}


def split_config_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """Separate `--config.a.b=value` (or `--config.a.b value`) from the other arguments."""
    rest, overrides = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--config."):
            body = arg[len("--config."):]
            if "=" not in body:
                if i + 1 >= len(argv):
                    raise SystemExit(f"diffjax: {arg} needs a value")
                body = f"{body}={argv[i + 1]}"
                i += 1
            overrides.append(body)
        else:
            rest.append(arg)
        i += 1
    return rest, overrides


def _load_command(name: str):
    module_name = COMMANDS[name][0]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):
            return None
        raise


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffjax",
        description="Text-to-image latent diffusion research in JAX/Flax.",
        epilog="Config overrides: --config.key=value (repeatable) after the subcommand. "
               "--debug (anywhere): show tracebacks for input errors too. Exit statuses: "
               "0 done, 1 a bug, 2 bad input, 75 stopped by a signal (rerun to resume), "
               "130 interrupted.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        # Only the chosen command's module is imported (keeps --help and info fast).
        if name == selected:
            module = _load_command(name)
            if module is None:
                p.description = f"{help_text} (not available in this version yet)"
                p.set_defaults(_missing=True)
            else:
                module.add_arguments(p)
                p.set_defaults(_run=module.run)
    return parser


def user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean "the input is wrong" (a config, a file, a model folder, the
    environment: a full disk, an unwritable folder, peers that never arrived): printed as
    one line, exit status 2. Anything else is a bug and keeps its traceback."""
    from diffjax.images import ImageConditioningError
    from diffjax.prompts import PromptFileError
    from diffjax.spec import ConfigError
    from diffjax.weights.io import WeightsError
    errors: list[type[BaseException]] = [ConfigError, WeightsError, PromptFileError,
                                         ImageConditioningError, OSError]
    try:
        from safetensors import SafetensorError
        errors.append(SafetensorError)
    except ImportError:
        pass
    if "diffjax.sharding" in sys.modules:      # only a command that joined a job can fail so
        errors.append(sys.modules["diffjax.sharding"].DistributedError)
    return tuple(errors)


def one_line(e: BaseException) -> str:
    """An exception's message on one line (multi-line messages joined with '; ')."""
    text = str(e).strip() or type(e).__name__
    if isinstance(e, OSError) and e.strerror:
        where = f": {e.filename!r}" if e.filename else ""
        text = f"{e.strerror}{where}" + (f" (while {e.__notes__[0]})"
                                          if getattr(e, "__notes__", None) else "")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return "".join(line + ("" if i == len(lines) - 1 else " " if line.endswith(":") else "; ")
                   for i, line in enumerate(lines))


# Exit statuses (README "Exit statuses"): 0 done; 1 a bug (traceback); 2 bad input (one
# line); 75 stopped by SIGTERM/SIGINT after finishing the batch in flight (rerun resumes);
# 130 interrupted before a job started (Ctrl-C while loading or compiling).
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("DIFFJAX_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    try:
        argv, overrides = split_config_overrides(argv)
    except SystemExit as e:
        print(e, file=sys.stderr)
        return EXIT_BAD_INPUT
    selected = next((a for a in argv if a in COMMANDS), None)
    parser = build_parser(selected)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if getattr(args, "_missing", False):
        print(f"diffjax {args.command}: not available in this version yet.", file=sys.stderr)
        return EXIT_BAD_INPUT
    args.config_overrides = overrides
    args.debug = debug
    if overrides and not hasattr(args, "config"):
        parser.error(f"`diffjax {args.command}` takes no --config overrides")
    from diffjax.spec import ConfigError
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"diffjax {args.command}: interrupted (nothing half-written; rerun the same "
              "command to resume)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except ConfigError as e:
        if debug:
            raise
        kind = "config error: " if type(e) is ConfigError else ""
        print(f"diffjax {args.command}: {kind}{one_line(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except user_errors() as e:
        if debug:
            raise
        print(f"diffjax {args.command}: {one_line(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    raise SystemExit(main())
