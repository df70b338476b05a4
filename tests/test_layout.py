"""The layers stay clean: erase/ knows nothing of DiT or evaluation, eval/ nothing of pipelines/, no import loops, and
no source file grows past what a reader holds at once."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("erase", "eval", "pipelines", "configs")
MAY_IMPORT = {"erase": {"erase"}, "eval": {"eval"}, "configs": {"configs"},
              "pipelines": {"erase", "eval", "pipelines", "configs"}}


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
            for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def _imports(path: Path) -> set[str]:
    """Our modules that a file imports (at any depth in the file, so function-level imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] in PACKAGES)
    return found


def test_no_layer_imports_upward():
    for name, path in _modules().items():
        layer = name.split(".")[0]
        for imported in _imports(path):
            assert imported.split(".")[0] in MAY_IMPORT[layer], f"{name} imports {imported}"


def test_no_import_loops():
    modules = _modules()
    graph = {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}
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
    assert len((ROOT / "pipelines" / "erase_class.py").read_text().splitlines()) < 120
