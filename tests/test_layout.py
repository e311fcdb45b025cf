"""The package's shape: the pipeline's folders import one way, modules and functions stay small."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "edge_mnv1"

# Lower layers never import higher ones: a module may import its own folder and any folder
# listed after its own.
LAYERS = ["cli", "verbs", "evaluation", "device", "compiler", "emulators", "artifact",
          "quant", "onnxio", "model"]
SHARED = {"errors", "log", "versions", "hashing", "paths", "__init__"}


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(p for p in rel.parts if p != "__init__")
        yield name, path


def imports_of(name: str, path: Path) -> set[str]:
    """Every edge_mnv1 module this file imports, at any depth (function-level imports too)."""
    tree = ast.parse(path.read_text())
    pkg = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(pkg[: len(pkg) - node.level + 1] + ([base] if base else []))
            if base.startswith("edge_mnv1"):
                for a in node.names:
                    full = f"{base}.{a.name}"
                    out.add(full if any(n == full for n, _ in modules()) else base)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("edge_mnv1")}
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module":
            if node.args and isinstance(node.args[0], ast.Constant):
                out.add(node.args[0].value)
            elif node.args and isinstance(node.args[0], ast.JoinedStr):
                # f"edge_mnv1.verbs.{verb}": counts as importing every module it can name
                head = node.args[0].values[0]
                prefix = head.value if isinstance(head, ast.Constant) else ""
                assert prefix.startswith("edge_mnv1."), f"{name}: importlib of {prefix!r}..."
                out |= {n for n, _ in modules() if n.startswith(prefix)}
    return out


def layer(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_dependencies_point_one_way():
    wrong = []
    for name, path in modules():
        here = layer(name)
        if here in SHARED:
            allowed = SHARED
        else:
            assert here in LAYERS, f"{name}: folder {here!r} is in no layer; add it to LAYERS"
            allowed = set(LAYERS[LAYERS.index(here):]) | SHARED
        for imp in imports_of(name, path):
            if layer(imp) not in allowed and imp != "edge_mnv1":
                wrong.append(f"{name} -> {imp}")
    assert not wrong, "imports against the pipeline's direction:\n" + "\n".join(wrong)


def test_no_import_cycles():
    graph = {name: {i for i in imports_of(name, path) if i != name} for name, path in modules()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in graph.get(n, ()):
            if state.get(m) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(m):] + [m]))
            if m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in graph:
        if n not in state:
            visit(n)


@pytest.mark.parametrize("limit_lines,limit_function", [(400, 80)])
def test_modules_and_functions_stay_small(limit_lines, limit_function):
    big = []
    for name, path in modules():
        n = len(path.read_text().splitlines())
        if n > limit_lines:
            big.append(f"{name}: {n} lines")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > limit_function:
                    big.append(f"{name}.{node.name}: {length} lines")
    assert not big, "too big to read at once:\n" + "\n".join(big)


def test_top_level_has_few_loose_modules():
    loose = [p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"]
    assert len(loose) <= 8, loose
