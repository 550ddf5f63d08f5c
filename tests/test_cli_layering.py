"""The import structure. The command line is the top layer: no module of ferkit below it imports
``ferkit.cli`` (the package's own modules and ``python -m ferkit``'s ``__main__`` excepted), so the
Python API never depends on argument parsing or on what the CLI prints. And no two modules import
each other, directly or round a circle, not even from inside a function: each helper has one home."""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
ALLOWED = {"ferkit.__main__"}   # `python -m ferkit` is the `ferkit` command


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, root: Path, annotations: bool = True) -> set[str]:
    """Every module ``path`` imports, relative imports resolved (``from . import x`` counts as
    importing both the package and ``package.x``); ``annotations=False`` leaves out the imports
    under ``if TYPE_CHECKING:``, which never run."""
    name = module_name(path, root)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    if not annotations:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                node.body = []
    found = set()
    for node in ast.walk(tree):
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



# ----------------------------------------------------------------------------- import circles
def import_graph(root: Path) -> dict[str, set[str]]:
    """ferkit module -> the ferkit modules it imports when it runs (imports inside functions count;
    a module's own parent packages, which Python imports first anyway, do not)."""
    paths = {module_name(p, root): p for p in sorted((root / "ferkit").rglob("*.py"))}
    graph = {}
    for name, path in paths.items():
        deps = set()
        for m in imported_modules(path, root, annotations=False):
            while m and m not in paths:     # `from ferkit.models import open_model` -> ferkit.models
                m = m.rpartition(".")[0]
            if m and m != name and not name.startswith(m + "."):
                deps.add(m)
        graph[name] = deps
    return graph


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import each other, directly or round a circle (strongly connected
    components of two or more modules; Tarjan's algorithm), each sorted."""
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while not group or group[-1] != v:
                group.append(stack.pop())
                on_stack.discard(group[-1])
            if len(group) > 1:
                circles.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(circles)


def test_no_import_circles():
    assert import_circles(import_graph(SRC)) == []


def test_the_checker_finds_an_import_circle(tmp_path):
    pkg = tmp_path / "ferkit"
    (pkg / "predict").mkdir(parents=True)
    files = {"__init__.py": "from .errors import E\n",
             "errors.py": "class E(Exception): ...\n",
             "data.py": "from .files import atomic\n",
             "files.py": "def cache():\n    from .data import load   # inside a function: still a circle\n",
             "predict/__init__.py": "from .track import t\n",
             "predict/track.py": "from typing import TYPE_CHECKING\nfrom .. import errors\n"
                                 "if TYPE_CHECKING:\n    from .recognizer import R   # annotations only\n",
             "predict/recognizer.py": "from .track import t\nfrom ..predict import track\n"}
    for f, text in files.items():
        (pkg / f).write_text(text)
    assert import_circles(import_graph(tmp_path)) == [["ferkit.data", "ferkit.files"]]
    (pkg / "predict" / "track.py").write_text("from .recognizer import R\n")
    assert import_circles(import_graph(tmp_path)) == [["ferkit.data", "ferkit.files"],
                                                      ["ferkit.predict.recognizer", "ferkit.predict.track"]]


# ----------------------------------------------------------------------------- function length
MAX_FUNCTION_LINES = 80   # a longer function hides parts that deserve a name (issue 34)


def long_functions(root: Path, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """``path:name (lines)`` of every function (nested ones included) longer than ``limit`` lines."""
    out = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    out.append(f"{path.relative_to(root)}:{node.name} ({lines})")
    return out


def test_no_function_is_longer_than_80_lines():
    assert long_functions(SRC) == []


def test_the_length_checker_finds_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    (tmp_path / "m.py").write_text(f"def short():\n    return 1\n\n\ndef long():\n{body}\n")
    assert long_functions(tmp_path) == [f"m.py:long ({MAX_FUNCTION_LINES + 1})"]
