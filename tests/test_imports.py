"""The packages' import graph: no cycles (function-level imports count), and analytic never
imports kvsim."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("analytic", "kvsim")


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] in ("__init__", "__main__"):
                parts = parts[:-1] if parts[-1] == "__init__" else parts
            out[".".join(parts)] = path
    return out


def _imports(path: Path, name: str, modules: dict) -> set[str]:
    """Project modules ``name`` imports anywhere in its file (top level, functions, TYPE_CHECKING)."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # ``from kvsim.cli import calc`` imports the module kvsim.cli.calc
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    modules = _modules()
    g = {name: _imports(path, name, modules) for name, path in modules.items()}
    # The imports made by name, when first needed: the CLI's commands and the package's public names.
    import kvsim
    from kvsim.cli.main import COMMANDS

    g["kvsim.cli.main"] |= {f"kvsim.cli.{module}" for module, _, _ in COMMANDS.values()}
    g["kvsim"] |= set(kvsim._HOMES.values())
    assert g["kvsim.cli.main"] <= set(modules) and g["kvsim"] <= set(modules)
    return g


def _cycle(g: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(n):
        state[n] = "open"
        stack.append(n)
        for m in sorted(g.get(n, ())):
            if state.get(m) == "open":
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = "done"
        return None

    for n in sorted(g):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_the_checker_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    g = graph()
    assert len(g) > 30 and "kvsim.cli.main" in g and "kvsim.cli.calc" in g["kvsim.cli.main"]
    assert _cycle(g) is None, " -> ".join(_cycle(g))


def test_analytic_never_imports_kvsim():
    bad = {n: sorted(m for m in deps if m.startswith("kvsim")) for n, deps in graph().items() if n.startswith("analytic")}
    assert not {n: d for n, d in bad.items() if d}
