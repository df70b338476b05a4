"""The layers stay clean: unlearn/ knows nothing of DiT or evaluation, metrics/ nothing of models or
runs, no import loops, a thin CLI, and no source file grows past what a reader holds at once. Only
`dualerase` is installed, and CONTRIBUTING.md's map names every module."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
# the bottom: they import no other layer
BASE = {"dualerase.errors", "dualerase.storage", "dualerase.launch"}
# What each layer may import (besides itself), from the bottom up; CONTRIBUTING.md's map says the
# same.
MAY_IMPORT = {
    "dualerase.errors": set(), "dualerase.storage": set(), "dualerase.launch": set(),
    "dualerase.fields": {"dualerase.errors"},
    "dualerase.unlearn": set(),
    "dualerase.metrics": {"dualerase.storage"},
    "dualerase.reports": {"dualerase.storage"},
    "dualerase.models": {"dualerase.metrics", *BASE},
    "dualerase.data": {"dualerase.models", *BASE},
    "dualerase.sampling": {"dualerase.models", "dualerase.data", *BASE},
    "dualerase.config": {"dualerase.unlearn", "dualerase.metrics", "dualerase.models",
                         "dualerase.fields", *BASE},
    "dualerase.integrations": {"dualerase.config", "dualerase.reports", *BASE},
}
EVERYTHING = set(MAY_IMPORT) | {"dualerase.runs", "dualerase.bench", "dualerase.api",
                                 "dualerase.cli", "dualerase"}
MAY_IMPORT |= {"dualerase.runs": EVERYTHING - {"dualerase.bench", "dualerase.api", "dualerase.cli",
                                               "dualerase"},
               "dualerase.bench": EVERYTHING - {"dualerase.api", "dualerase.cli", "dualerase"},
               "dualerase.api": EVERYTHING - {"dualerase.cli", "dualerase"},
               "dualerase.cli": EVERYTHING,
               "dualerase.__main__": {"dualerase.cli"},  # cli: __version__ too
               "dualerase": {"dualerase.api", "dualerase.config"}}


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__"): p
            for p in (SRC / "dualerase").rglob("*.py")}


def _layer(module: str) -> str:
    parts = module.split(".")
    return module if module in ("dualerase", "dualerase.__main__") else ".".join(parts[:2])


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Our modules that a file imports, and the modules named in strings.

    At any depth in the file, so function-level imports count too; the package's lazy public API
    imports modules by name."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        ours = isinstance(node, ast.ImportFrom) and node.module
        if ours and node.module.split(".")[0] == "dualerase":
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "dualerase")
        elif isinstance(node, ast.Constant) and node.value in modules and "." in node.value:
            found.add(node.value)
    return found


def test_only_dualerase_is_a_top_level_package():
    installed = [p.name for p in SRC.iterdir() if not p.name.endswith(".egg-info")]
    assert sorted(installed) == ["dualerase"]


def test_no_layer_imports_upward():
    modules = _modules()
    assert set(map(_layer, modules)) <= set(MAY_IMPORT), set(map(_layer, modules)) - set(MAY_IMPORT)
    for name, path in modules.items():
        layer = _layer(name)
        for imported in _imports(path, modules):
            if imported in modules or imported.rsplit(".", 1)[0] in modules:
                target = _layer(imported if imported in modules else imported.rsplit(".", 1)[0])
                assert target == layer or target in MAY_IMPORT[layer], f"{name} imports {imported}"


def test_no_folder_holds_more_than_12_modules():
    for folder in (SRC / "dualerase").rglob("*/"):
        if folder.name != "__pycache__":
            assert len([p for p in folder.glob("*.py") if p.name != "__init__.py"]) <= 12, folder


def test_no_import_loops():
    modules = _modules()
    graph = {name: {m for m in _imports(path, modules) if m in modules and m != name}
             for name, path in modules.items()}
    state = {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in graph[node]:
            assert state.get(nxt) != "open", " -> ".join([*stack, node, nxt])
            if nxt not in state:
                visit(nxt, [*stack, node])
        state[node] = "done"

    for node in graph:
        if node not in state:
            visit(node, [])


def test_no_source_file_is_over_300_lines_and_the_cli_is_thin():
    for name, path in _modules().items():
        assert len(path.read_text().splitlines()) <= 300, name
    for command in (SRC / "dualerase" / "cli").glob("*.py"):
        assert len(command.read_text().splitlines()) < 120, command.name


def _map_rows() -> dict[str, str]:
    """CONTRIBUTING.md's layout map: each row's first column (what it names) -> the row."""
    rows = {}
    for line in (ROOT / "CONTRIBUTING.md").read_text().splitlines():
        if line.startswith("| `"):
            rows[line.split(" | ")[0]] = line
    return rows


def test_contributing_maps_every_module_and_each_layer_once():
    """The one layout map names every module in its folder's row, and every layer in MAY_IMPORT."""
    rows = _map_rows()
    for path in (SRC / "dualerase").rglob("*.py"):
        parts = path.relative_to(SRC / "dualerase").parts
        if len(parts) == 1:  # a top-level module: named in a row's first column
            assert any(f"`{parts[0]}`" in first for first in rows), parts[0]
        elif parts[-1] != "__init__.py":  # in its folder's row: the file, or its sub-folder
            row = next((r for first, r in rows.items() if f"`{parts[0]}/`" in first), None)
            assert row is not None, f"no row for {parts[0]}/"
            named = parts[1] if len(parts) == 2 else f"{parts[1]}/"
            assert f"`{named}" in row, f"{'/'.join(parts)} is not in the map's row for {parts[0]}/"
    for layer in MAY_IMPORT:
        name = layer.removeprefix("dualerase").lstrip(".") or "__init__"
        assert any(f"`{name}/`" in first or f"`{name}.py`" in first for first in rows), layer
