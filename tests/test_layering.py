"""The package's shape (docs: the engineering guide): imports flow one way, names with a leading
underscore stay in their file, files stay small, library code does not know the repository's layout."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "difflab"
MAX_LINES = 450


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every file of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path]):
    """``(module imported, names taken from it, line)`` for every import of the package in ``path``."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if target.split(".")[0] != "difflab":
                continue
            for alias in node.names:   # `from . import submodule` imports the submodule
                sub = f"{target}.{alias.name}"
                yield (sub, [], node.lineno) if sub in known else (target, [alias.name], node.lineno)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "difflab":
                    yield alias.name, [], node.lineno


def test_no_import_circles():
    known = modules()
    graph = {name: {t for t, _, _ in imports(name, path, known) if t in known and t != name}
             for name, path in known.items()}
    # a package's __init__ only hands names on: importing `difflab.x.y` runs `difflab.x` first, which is
    # not an edge of the code's own structure; the edges are the ones written in the files
    state, stack, circles = {}, [], []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert circles == [], "\n".join(" -> ".join(c) for c in circles)


def test_no_private_name_is_imported_across_files():
    known = modules()
    found = [f"{path.relative_to(PACKAGE.parent)}:{line}: {target} import {n}"
             for name, path in known.items() for target, names, line in imports(name, path, known)
             for n in names if n.startswith("_") and not n.startswith("__")]
    assert found == [], "\n".join(found)


def test_files_stay_small():
    big = {str(p.relative_to(PACKAGE.parent)): n for p in PACKAGE.rglob("*.py")
           if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert big == {}


def test_library_code_does_not_know_where_the_repository_folders_are():
    hits = [str(p.relative_to(PACKAGE.parent)) for p in PACKAGE.rglob("*.py")
            if "parents[2]" in (text := p.read_text(encoding="utf-8")) or '"benchmarks"' in text]
    assert hits == []
