"""The shape of the code: no import circles in core/, pages that import only core and the UI libraries, a
product package that never imports its test doubles or Streamlit (one module of cached getters aside)."""

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "core"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of the file (a lazy import inside a function counts too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join([*anchor, base]) if base else ".".join(anchor)
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return out


def core_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in CORE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        graph[name] = {m for m in imports_of(path) if m in modules and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    counter = [0]
    sys.setrecursionlimit(10_000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_core_has_no_import_circles():
    assert cycles(core_graph()) == []


def test_the_circle_check_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


STDLIB = set(sys.stdlib_module_names)
UI_LIBRARIES = {"streamlit", "pandas", "plotly"}  # what a page draws with


def test_pages_import_only_core_and_the_ui_libraries():
    for path in [*sorted((ROOT / "pages").glob("*.py")), ROOT / "app.py"]:
        for name in imports_of(path):
            top = name.split(".")[0]
            assert top in STDLIB or top in UI_LIBRARIES or top == "core", f"{path.name} imports {name}"


def test_core_never_imports_streamlit_or_test_doubles():
    assert not [p.name for p in CORE.rglob("fake*.py")], "test doubles live in fakes/, outside the product"
    for path in [*CORE.rglob("*.py"), *(ROOT / "pages").glob("*.py"), ROOT / "app.py"]:
        names = imports_of(path)
        assert not any(n.split(".")[0] == "fakes" for n in names), f"{path} imports a test double"
        if path.parent.name != "pages" and path.name not in ("ui_cache.py", "app.py"):
            # the one module of cached getters the pages share is the only core module that knows Streamlit
            assert not any(n.split(".")[0] == "streamlit" for n in names), f"{path} imports streamlit"


# Each subsystem and what it may import (besides itself and the standard library); the packages' docstrings say
# the same. Foundations import only foundations; the entry points (cli, ui_cache, examples) import anything.
FOUNDATIONS = {"errors", "config", "schema", "db", "ids", "readonly", "access", "turn_labels"}
LAYERS = {
    "foundations": FOUNDATIONS,
    "corpus": FOUNDATIONS,
    "providers": FOUNDATIONS,
    "quality": FOUNDATIONS | {"corpus", "providers"},
    "workbench": FOUNDATIONS | {"corpus", "quality"},  # quality: the passage windows embedded as chunks are indexed
    "generation": FOUNDATIONS | {"corpus", "providers", "quality", "workbench"},
    "review": FOUNDATIONS | {"corpus", "providers", "quality", "generation"},
    "export": FOUNDATIONS | {"corpus", "providers", "quality", "generation", "review"},
}
ENTRY_POINTS = {"cli", "ui_cache", "examples"}


def unit_of(module: str) -> str:
    """The subsystem a core module belongs to: its package, or the top-level module's own name."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "core"


def test_each_subsystem_imports_only_the_ones_before_it():
    top_level = {p.stem for p in CORE.glob("*.py")} - {"__init__"}
    packages = {p.parent.name for p in CORE.glob("*/__init__.py")}
    assert top_level - ENTRY_POINTS - {"workbench"} == FOUNDATIONS, "a new top-level module: place it in a layer"
    assert packages == set(LAYERS) - {"foundations", "workbench"}, "a new package: give it a layer"
    wrong = []
    for path in CORE.rglob("*.py"):
        unit = unit_of(module_name(path))
        if unit in ENTRY_POINTS or unit == "core":
            continue
        allowed = LAYERS["foundations" if unit in FOUNDATIONS else unit] | {unit}
        for name in imports_of(path):
            if name.split(".")[0] != "core" or name == "core":
                continue
            target = unit_of(name)
            if target not in allowed:
                wrong.append(f"{module_name(path)} imports {name}")
    assert wrong == []


def test_every_package_says_what_it_holds_and_what_it_may_import():
    for init in CORE.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""
        assert "May import" in doc, f"{init.parent.name}/__init__.py does not say what it may import"
