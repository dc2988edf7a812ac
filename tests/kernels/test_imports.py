"""flashllm's modules import one another in layers: no import loops, every arrow points down.  Read from the
sources (ast), not by importing them: a module-level import is an arrow; an import inside a function would hide
a loop from this test, so the kernels, formats and engine have none of their own package's."""

import ast
from pathlib import Path

import flashllm

ROOT = Path(flashllm.__file__).parent
# Arrows into flashllm/__init__.py from modules it imports (late-bound `import flashllm`), outside the kernels,
# formats and engine; tracked in issue 22.
KNOWN_LOOPS = {("flashllm.nn", "flashllm"), ("flashllm.models.save", "flashllm")}
NO_LOCAL_IMPORTS = ("flashllm.kernels", "flashllm.formats", "flashllm.engine", "flashllm.ops")


def modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imported(module: str, node: ast.AST, is_package: bool, known: dict) -> set[str]:
    """The flashllm modules an import statement loads (a package only where a name comes from its __init__)."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name.split(".")[0] == "flashllm"}
    if node.level:
        base = module.split(".")[:len(module.split(".")) - node.level + (1 if is_package else 0)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    if source.split(".")[0] != "flashllm":
        return set()
    submodules = {f"{source}.{a.name}" for a in node.names if f"{source}.{a.name}" in known}
    return submodules | ({source} if len(submodules) < len(node.names) else set())


def graph():
    known = modules()
    arrows, local = {}, []
    for module, path in known.items():
        is_package = path.name == "__init__.py"
        arrows[module] = set()

        def visit(node, function):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found = imported(module, node, is_package, known)
                if function is None:
                    arrows[module] |= found - {module}
                elif found:
                    local.append(f"{module}.{function}")
            for child in ast.iter_child_nodes(node):
                inner = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                visit(child, getattr(child, "name", "<lambda>") if inner else function)

        visit(ast.parse(path.read_text()), None)
    return arrows, local


def test_no_import_loops():
    arrows, _ = graph()
    for edge in KNOWN_LOOPS:
        arrows[edge[0]].discard(edge[1])
    state, loops = {}, []

    def visit(module, path):
        state[module] = "open"
        for nxt in sorted(arrows[module]):
            if state.get(nxt) == "open":
                loops.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[module] = "done"

    for module in sorted(arrows):
        if module not in state:
            visit(module, [module])
    assert not loops, "import loops: " + "; ".join(" -> ".join(loop) for loop in loops)


def test_no_imports_inside_functions_dodge_loops():
    _, local = graph()
    offenders = [f for f in local if f.startswith(NO_LOCAL_IMPORTS)]
    assert not offenders, offenders
