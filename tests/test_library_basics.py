"""What a published library ships: a license, type information, documented public names,
and no pointers to files outside the repository.

The two checks that read the code run alone as `make check-docstrings` and
`make check-references` (or `pytest tests/test_library_basics.py -k docstring` /
`-k refer`); each failure lists every offending name or line at once.
"""

from __future__ import annotations

import importlib
import inspect
import re

try:
    import tomllib
except ImportError:  # Python 3.10: pytest depends on tomli there
    import tomli as tomllib
from pathlib import Path

import pytest

import meta_opt

ROOT = Path(__file__).resolve().parents[1]

# Every public package and module of the API reference; their public names are `__all__`
# (or, without one, the public names the module defines itself).
PUBLIC_MODULES = [
    "meta_opt.cli",
    "meta_opt.data",
    "meta_opt.distributed",
    "meta_opt.experiments",
    "meta_opt.learned",
    "meta_opt.optimizers",
    "meta_opt.outer",
    "meta_opt.sharding",
    "meta_opt.tasks",
    "meta_opt.torch",
]

# Text that sends a reader to a file the repository does not have: the project's design
# and style notes, the seed tutorials it was built from, the CI machine's shared folder.
OUTSIDE_REFERENCES = {
    "DESIGN notes": re.compile(r"\bDESIGN\b"),
    "STYLE notes": re.compile(r"\bSTYLE\.md\b"),
    "seed documents": re.compile(r"\bseeds?[ -]0\d\d\b|\bseed tutorials?\b|\bseeds/", re.I),
    "the shared folder": re.compile(r"\.\./shared\b|\bshared/(data|seeds|hooks)\b"),
}
SCANNED = ["README.md", "docs", "meta_opt", "examples", "configs", "benchmarks", "mkdocs.yml"]
SCANNED_SUFFIXES = {".md", ".py", ".yml", ".yaml", ".toml", ".txt", ".cfg"}


def test_license_is_the_full_apache_2_text():
    text = (ROOT / "LICENSE").read_text()
    for phrase in ("Apache License", "Version 2.0, January 2004",
                   "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION",
                   "9. Accepting Warranty or Additional Liability.",
                   "END OF TERMS AND CONDITIONS", "APPENDIX: How to apply the Apache License"):
        assert phrase in text
    assert len(text.splitlines()) > 190  # the whole text, not a notice
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0" and "LICENSE" in project["license-files"]


def test_py_typed_marks_the_package_as_typed_and_ships_with_it():
    assert (Path(meta_opt.__file__).parent / "py.typed").is_file()
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "py.typed" in setuptools["package-data"]["meta_opt"]


def _auto_doc(obj) -> bool:
    """Docstrings that dataclasses / NamedTuple write themselves: 'Name(field, ...)'."""
    doc = obj.__dict__.get("__doc__") or ""
    return doc.startswith(f"{obj.__name__}(")


def _missing_docstrings(module_name: str) -> list[str]:
    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n, v in vars(module).items()
                 if not n.startswith("_") and getattr(v, "__module__", None) == module_name
                 and (inspect.isclass(v) or inspect.isfunction(v))]
    missing = []
    for name in names:
        obj = getattr(module, name)
        if inspect.isclass(obj):
            if not (obj.__dict__.get("__doc__") or "").strip() or _auto_doc(obj):
                missing.append(name)
            for attr, value in vars(obj).items():
                if attr.startswith("_"):
                    continue
                func = value.fget if isinstance(value, property) else getattr(
                    value, "__func__", value)
                if not inspect.isfunction(func):
                    continue
                if not func.__qualname__.startswith(obj.__qualname__ + "."):
                    continue  # made by a decorator (e.g. flax.struct's replace)
                if not (inspect.getdoc(getattr(obj, attr)) or "").strip():
                    missing.append(f"{name}.{attr}")
        elif callable(obj) and not (inspect.getdoc(obj) or "").strip():
            missing.append(name)
    return missing


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_every_public_name_has_a_docstring(module_name):
    """Public classes and functions, and the public methods those classes define.

    A method may inherit its docstring from the method it overrides (as `inspect.getdoc`
    does); a class's docstring must be its own.
    """
    missing = _missing_docstrings(module_name)
    assert not missing, f"{module_name}: no docstring on {', '.join(missing)}"


def _scanned_files() -> list[Path]:
    files = []
    for entry in SCANNED:
        path = ROOT / entry
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files += sorted(p for p in path.rglob("*")
                            if p.suffix in SCANNED_SUFFIXES and "__pycache__" not in p.parts)
    return files


def test_no_file_refers_to_files_outside_the_repository():
    hits = []
    for path in _scanned_files():
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for what, pattern in OUTSIDE_REFERENCES.items():
                if pattern.search(line):
                    hits.append(f"{path.relative_to(ROOT)}:{number}: {what}: {line.strip()}")
    assert not hits, "references to files outside the repository:\n" + "\n".join(hits)


@pytest.mark.parametrize("line, refers", [
    ("see DESIGN.md section 5", True),
    ("per DESIGN section 3", True),
    ("hand-designed baselines", False),
    ("the seed tutorials run as", True),
    ("seed-001 signatures", True),
    ("examples/lopt_seed001_gradient_learner.py", False),
    ("median over seeds of the gap", False),
    ("--set experiment.data_dir=../shared/data", True),
    ("STYLE.md", True),
])
def test_the_reference_patterns_catch_what_they_should(line, refers):
    assert any(p.search(line) for p in OUTSIDE_REFERENCES.values()) == refers
