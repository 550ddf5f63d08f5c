"""The command line is the top layer: no module of ferkit below it imports ``ferkit.cli`` (the
package's own modules and ``python -m ferkit``'s ``__main__`` excepted), so the Python API never
depends on argument parsing or on what the CLI prints."""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
ALLOWED = {"ferkit.__main__"}   # `python -m ferkit` is the `ferkit` command


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, root: Path) -> set[str]:
    """Every module ``path`` imports, relative imports resolved (``from . import x`` counts as
    importing both the package and ``package.x``)."""
    name = module_name(path, root)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def cli_importers(root: Path) -> list[str]:
    """Modules under ``root``/ferkit outside ferkit.cli that import ferkit.cli or a module of it."""
    bad = []
    for path in sorted((root / "ferkit").rglob("*.py")):
        name = module_name(path, root)
        if name == "ferkit.cli" or name.startswith("ferkit.cli.") or name in ALLOWED:
            continue
        hits = sorted(m for m in imported_modules(path, root) if m == "ferkit.cli" or m.startswith("ferkit.cli."))
        if hits:
            bad.append(f"{name} imports {', '.join(hits)}")
    return bad


def test_nothing_below_the_cli_imports_it():
    assert (SRC / "ferkit" / "cli" / "__init__.py").is_file()
    assert cli_importers(SRC) == []


def test_the_checker_finds_an_import_of_the_cli(tmp_path):
    pkg = tmp_path / "ferkit"
    (pkg / "cli").mkdir(parents=True)
    (pkg / "predict").mkdir()
    for f in ("__init__.py", "cli/__init__.py", "cli/train.py", "predict/__init__.py", "__main__.py"):
        (pkg / f).write_text("")
    (pkg / "cli" / "train.py").write_text("from ..train import train\nfrom . import options\n")   # inside: fine
    (pkg / "__main__.py").write_text("from .cli import main\n")                                     # allowed
    (pkg / "evaluate.py").write_text("import json\nfrom .cli import run\n")
    (pkg / "predict" / "runner.py").write_text("def f():\n    from .. import cli\n")
    (pkg / "predict" / "text.py").write_text("from ferkit.cli.train import TRAIN_OPTIONS\n")
    (pkg / "predict" / "fine.py").write_text("from ..client import x\nfrom . import cli_helpers\n")
    assert cli_importers(tmp_path) == ["ferkit.evaluate imports ferkit.cli, ferkit.cli.run",
                                       "ferkit.predict.runner imports ferkit.cli",
                                       "ferkit.predict.text imports ferkit.cli.train, ferkit.cli.train.TRAIN_OPTIONS"]
