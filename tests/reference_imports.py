"""Imports of PyTorch reference packages that do not import as-is on the CPU-only torch
the dev extra pins (`torch==2.13.0+cpu`).

- torchvision: PyPI's torchvision wheel is built against CUDA torch; its C++ ops library
  (`torchvision/_C.so`) does not load beside the CPU torch, and `torchvision/__init__`
  then fails while registering fake kernels for those ops (`torchvision::nms does not
  exist`). The references only use torchvision's pure-Python parts (model definitions,
  transforms), so the fake-kernel registrations are skipped during its import.
  pytorch-fid, torch-fidelity and k-diffusion import torchvision.
- k-diffusion: the package's `__init__` imports its training code (clip-anytorch, which
  needs `pkg_resources`); the references need only `k_diffusion/sampling.py` and the
  `utils.py` it imports, so those two modules are loaded from the installed package
  without running `__init__`.
- Subprocesses (CLI tests running `--vs diffusers`) get the same torchvision import from
  `tests/site/sitecustomize.py`, which tests/conftest.py puts on their PYTHONPATH. Its newest release (0.1.1) cannot be installed beside
  numpy 2 (dctorch pins numpy<2); 0.0.16's `sampling.py` has every sampler the tests use.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import types


class _TorchvisionWithoutOps(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds `torchvision` as usual and runs its `__init__` with torch's fake-kernel
    registration switched off, whoever imports it first (transformers and diffusers probe
    it when they import their image processors)."""

    def find_spec(self, name, path=None, target=None):
        if name != "torchvision":
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None:
            return None
        self._loader = spec.loader
        spec.loader = self
        return spec

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        import torch.library
        register_fake = torch.library.register_fake
        torch.library.register_fake = lambda *args, **kwargs: (lambda fn: fn)
        try:
            self._loader.exec_module(module)
        finally:
            torch.library.register_fake = register_fake


def install_torchvision_finder():
    """Make every later `import torchvision` in this process go through
    `_TorchvisionWithoutOps` (tests/site/sitecustomize.py does it in subprocesses)."""
    if not any(isinstance(f, _TorchvisionWithoutOps) for f in sys.meta_path):
        sys.meta_path.insert(0, _TorchvisionWithoutOps())


def import_torchvision():
    """torchvision, imported without its C++ ops (see the module docstring)."""
    install_torchvision_finder()
    import torchvision
    return torchvision


def k_diffusion_sampling():
    """The installed k-diffusion's own `sampling` module (and its `utils`), loaded without
    the package's `__init__`."""
    if "k_diffusion.sampling" in sys.modules:
        return sys.modules["k_diffusion.sampling"]
    import_torchvision()
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("k-diffusion is not installed (the dev extra)")
    root = list(spec.submodule_search_locations)[0]
    package = types.ModuleType("k_diffusion")
    package.__path__ = [root]
    sys.modules["k_diffusion"] = package
    for name in ("utils", "sampling"):
        sub = importlib.util.spec_from_file_location(f"k_diffusion.{name}",
                                                     f"{root}/{name}.py")
        module = importlib.util.module_from_spec(sub)
        sys.modules[f"k_diffusion.{name}"] = module
        sub.loader.exec_module(module)
        setattr(package, name, module)
    return sys.modules["k_diffusion.sampling"]
