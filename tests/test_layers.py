"""The tree shows the architecture: imports point one way, cli → api → pipelines/release →
sources/cache → formats → base (settings and errors are used by every layer)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "teadist"
RANKS = {"cli": 6, "__main__": 6, "api": 5, "__init__": 5, "pipelines": 4, "release": 4, "sources": 3,
         "cache": 3, "formats": 2, "web": 2, "base": 1, "settings": 1, "errors": 0}


def _layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "__init__"
    if parts[1] not in RANKS:  # a name of the package root itself (__version__): a constant, no layer
        return "errors"
    return parts[1]


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("teadist"):
            found.add(node.module if node.module != "teadist" else f"teadist.{node.names[0].name}")
        elif isinstance(node, ast.Import):
            # ``import teadist`` (for its __file__): the package root's own names, no layer
            found |= {a.name if a.name != "teadist" else "teadist.__file__" for a in node.names
                      if a.name.startswith("teadist")}
    return found


def test_no_module_imports_a_higher_layer() -> None:
    upward = []
    for path in sorted(ROOT.rglob("*.py")):
        relative = path.relative_to(ROOT.parent).with_suffix("")
        module = ".".join(relative.parts).removesuffix(".__init__")
        layer = _layer(module) if module != "teadist" else "__init__"
        for imported in _imports(path):
            if RANKS[_layer(imported)] > RANKS[layer]:
                upward.append(f"{module} imports {imported}")
    assert upward == []


def test_every_layer_is_known() -> None:
    layers = {p.name.removesuffix(".py") for p in ROOT.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()}
    assert layers <= set(RANKS)


# The CLI presents, the API decides: the commands on models and files reach the pipelines only
# through teadist.api (base, errors and settings apart).
CLI_MAY_IMPORT = ("teadist.api", "teadist.base", "teadist.cli", "teadist.errors", "teadist.settings",
                  "teadist.__version__")
PRESENTING = ["app", "files", "maintain", "models", "web"]


def test_the_cli_reaches_the_pipelines_only_through_the_api() -> None:
    reached = {f"cli/{name}.py imports {module}" for name in PRESENTING
               for module in _imports(ROOT / "cli" / f"{name}.py")
               if not module.startswith(CLI_MAY_IMPORT)}
    assert sorted(reached) == []
