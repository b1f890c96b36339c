"""docs/ARCHITECTURE.md names only what exists, and the docs link only to files in the repo.

The architecture doc is the map of the code; a file moved or renamed without the map
following is caught here. Every backticked repository path (`diffjax/weights/load.py`,
`diffjax/models/`) must exist, every backticked dotted name under `diffjax`
(`diffjax.sharding.DEFAULT_RULES`) must import, and every relative link of README.md and
docs/*.md must point at an existing file inside the repository.
"""

import importlib
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCHITECTURE = os.path.join(ROOT, "docs", "ARCHITECTURE.md")

_FENCE = re.compile(r"^```.*?^```", re.S | re.M)
_BACKTICKED = re.compile(r"`([^`\n]+)`")
_PATH = re.compile(r"[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)+/?|[A-Za-z0-9_-]+/")
_DOTTED = re.compile(r"diffjax(?:\.[A-Za-z_][A-Za-z0-9_]*)+")
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def prose(text: str) -> str:
    """The text outside fenced code blocks (commands and diagrams there are not names)."""
    return _FENCE.sub("", text)


def named_paths(text: str) -> list[str]:
    """Backticked spans that are repository paths: `a/b.py`, `dir/`, `a/b/`."""
    return [s for s in _BACKTICKED.findall(prose(text)) if _PATH.fullmatch(s)]


def named_modules(text: str) -> list[str]:
    """Backticked dotted names under the package: `diffjax.x.y` (module or attribute)."""
    return [s for s in _BACKTICKED.findall(prose(text)) if _DOTTED.fullmatch(s)]


def relative_links(text: str) -> list[str]:
    """Markdown link and image targets that are not URLs or in-page anchors."""
    out = []
    for target in _LINK.findall(prose(text)):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue
        out.append(target.split("#", 1)[0])
    return out


def missing_paths(paths, base: str) -> list[str]:
    """The paths that do not exist under `base`, or that leave the repository."""
    bad = []
    for p in paths:
        full = os.path.normpath(os.path.join(base, p))
        if os.path.commonpath([full, ROOT]) != ROOT or not os.path.exists(full):
            bad.append(p)
        elif p.endswith("/") and not os.path.isdir(full):
            bad.append(p)
    return bad


def unresolved(dotted_names) -> list[str]:
    """The dotted names whose longest module prefix does not import or lacks the rest."""
    bad = []
    for name in dotted_names:
        parts = name.split(".")
        for i in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:i]))
            except ModuleNotFoundError:
                continue
            try:
                for attr in parts[i:]:
                    obj = getattr(obj, attr)
            except AttributeError:
                bad.append(name)
            break
        else:
            bad.append(name)
    return bad


def read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def docs_files() -> list[str]:
    docs = os.path.join(ROOT, "docs")
    return [os.path.join(ROOT, "README.md")] + sorted(
        os.path.join(docs, n) for n in os.listdir(docs) if n.endswith(".md"))


def test_extraction_finds_names_and_misses():
    text = ("See `diffjax/pipeline.py`, `diffjax/models/`, `tests/`, `no/such_file.py` and "
            "`diffjax.sharding.DEFAULT_RULES`, `diffjax.sharding.NO_SUCH`, not `a = b/c` or "
            "`--config.x=1`.\n```\ndiffjax/inside_a_fence.py\n```\n"
            "[doc](docs/ARCHITECTURE.md), [web](https://x.org/a), [up](../outside.md), [a](#top)")
    paths = named_paths(text)
    assert paths == ["diffjax/pipeline.py", "diffjax/models/", "tests/", "no/such_file.py"]
    assert missing_paths(paths, ROOT) == ["no/such_file.py"]
    assert unresolved(named_modules(text)) == ["diffjax.sharding.NO_SUCH"]
    assert relative_links(text) == ["docs/ARCHITECTURE.md", "../outside.md"]
    assert missing_paths(relative_links(text), ROOT) == ["../outside.md"]


def test_every_path_architecture_names_exists():
    paths = named_paths(read(ARCHITECTURE))
    assert len(set(paths)) >= 30, f"only {len(set(paths))} paths found: the extraction broke"
    assert missing_paths(sorted(set(paths)), ROOT) == []


def test_every_dotted_name_architecture_uses_imports():
    names = named_modules(read(ARCHITECTURE))
    assert len(set(names)) >= 5, f"only {len(set(names))} dotted names found"
    assert unresolved(sorted(set(names))) == []


@pytest.mark.parametrize("path", docs_files(), ids=lambda p: os.path.relpath(p, ROOT))
def test_relative_links_point_inside_the_repo(path):
    links = relative_links(read(path))
    assert missing_paths(links, os.path.dirname(path)) == []


def test_readme_links_the_docs():
    links = relative_links(read(os.path.join(ROOT, "README.md")))
    assert {"docs/ARCHITECTURE.md", "docs/performance.md"} <= set(links)
