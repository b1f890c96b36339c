"""Tests that need the dev extra's PyTorch references carry the `parity` marker.

Without the dev extra (`pip install -e . pytest`) conftest skips parity-marked tests and
`pytest -m "not parity"` runs the pure-JAX suite. That only holds if (1) no test module
imports torch or diffusers at module level outside a `try` (collection would fail), and (2)
every test that reaches torch, diffusers or a transformers PyTorch model is marked. This
reads the test files (no import, no torch needed) and checks both.

What counts as reaching a reference: a name bound by an import of torch or diffusers, a
local import of either, a `transformers.<X>` other than its tokenizer and configs, or a
helper of tests/sampler_refs.py that uses torch; followed through the module's own
functions and fixtures (by parameter name).
"""

import ast
import os

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
REFERENCES = ("torch", "diffusers")
TRANSFORMERS_WITHOUT_TORCH = ("CLIPTokenizer",)   # and every *Config


def _is_reference_import(node) -> bool:
    if isinstance(node, ast.Import):
        return any(a.name.split(".")[0] in REFERENCES for a in node.names)
    if isinstance(node, ast.ImportFrom):
        return (node.module or "").split(".")[0] in REFERENCES or (
            (node.module or "").startswith("transformers.models"))
    return False


def _bound_names(node) -> set[str]:
    return {(a.asname or a.name).split(".")[0] for a in node.names}


def module_level_reference_imports(tree) -> list[int]:
    """Line numbers of top-level reference imports that are not inside a `try`."""
    return [n.lineno for n in tree.body if _is_reference_import(n)]


def reference_names(tree) -> set[str]:
    """Names the module binds to references (in a guarded `try` at top level)."""
    names = set()
    for n in tree.body:
        for sub in ast.walk(n) if isinstance(n, ast.Try) else [n]:
            if _is_reference_import(sub):
                names |= _bound_names(sub)
    return names


def torch_helpers(path: str) -> set[str]:
    """Top-level functions and methods of a helper module whose bodies use torch."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    defs = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    defs += [m for c in tree.body if isinstance(c, ast.ClassDef) for m in c.body
             if isinstance(m, ast.FunctionDef)]
    out = set()
    for node in defs:
        if any(
                isinstance(n, ast.Name) and n.id in REFERENCES for n in ast.walk(node)):
            out.add(node.name)
    return out


def _uses_reference(fn, names: set[str], helpers: set[str]) -> bool:
    for n in ast.walk(fn):
        if isinstance(n, ast.Name) and n.id in names:
            return True
        if isinstance(n, ast.Attribute):
            if n.attr in helpers:
                return True
            if (isinstance(n.value, ast.Name) and n.value.id == "transformers"
                    and n.attr not in TRANSFORMERS_WITHOUT_TORCH
                    and not n.attr.endswith("Config")):
                return True
        if _is_reference_import(n):
            return True
    return False


def _is_parity_mark(decorator) -> bool:
    return ast.unparse(decorator).startswith("pytest.mark.parity")


def unmarked_reference_tests(source: str, helpers: set[str]) -> list[str]:
    """Tests (top-level `test_*` functions) that reach a reference but are not marked."""
    tree = ast.parse(source)
    if any(isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "pytestmark"
                                             for t in n.targets)
           and "parity" in ast.unparse(n.value) for n in tree.body):
        return []
    names = reference_names(tree)
    funcs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    memo: dict[str, bool] = {}

    def reaches(name: str, seen=()) -> bool:
        if name in memo:
            return memo[name]
        fn = funcs[name]
        called = {n.id for n in ast.walk(fn) if isinstance(n, ast.Name)}
        called |= {a.arg for a in fn.args.args}       # fixtures of this module
        memo[name] = _uses_reference(fn, names, helpers) or any(
            reaches(c, seen + (name,)) for c in called
            if c in funcs and c != name and c not in seen)
        return memo[name]

    return [name for name, fn in funcs.items() if name.startswith("test_")
            and not any(_is_parity_mark(d) for d in fn.decorator_list) and reaches(name)]


def _test_files() -> list[str]:
    return sorted(n for n in os.listdir(TESTS) if n.endswith(".py"))


HELPERS = torch_helpers(os.path.join(TESTS, "sampler_refs.py"))


def test_the_checks_can_fail():
    source = ("import pytest\ntry:\n    import torch\nexcept ModuleNotFoundError:\n"
              "    torch = None\nimport transformers\n\n"
              "def _ref():\n    return torch.ones(1)\n\n"
              "@pytest.fixture\ndef model():\n    return transformers.CLIPTextModel(None)\n\n"
              "def test_a():\n    _ref()\n\n@pytest.mark.parity\ndef test_b():\n    _ref()\n\n"
              "def test_c(model):\n    pass\n\ndef test_d():\n    import diffusers\n\n"
              "def test_e(R):\n    R.run_diffusers()\n\n"
              "def test_pure():\n    transformers.CLIPTextConfig()\n")
    assert unmarked_reference_tests(source, {"run_diffusers"}) == [
        "test_a", "test_c", "test_d", "test_e"]
    assert module_level_reference_imports(ast.parse("import torch\nimport numpy\n")) == [1]
    assert {"run_diffusers", "gm_eps_torch", "torch"} <= HELPERS


@pytest.mark.parametrize("name", _test_files())
def test_reference_imports_are_guarded_and_tests_marked(name):
    source = open(os.path.join(TESTS, name), encoding="utf-8").read()
    assert module_level_reference_imports(ast.parse(source)) == [], (
        f"{name}: import torch/diffusers inside a try (see tests/conftest.py)")
    if name.startswith("test_"):
        assert unmarked_reference_tests(source, HELPERS) == [], (
            f"{name}: these tests need torch/diffusers; mark them @pytest.mark.parity")
