"""The house rules that keep the sync core legible, checked on the source.

- Only the applier (sync/applier.py) writes the `files` table or mutates the
  store (docs/design.md: one applier). Everything else reads, enqueues, or asks the
  applier: a new module that writes a row or deletes a document directly
  fails here, before it can race the applier.
- Dependencies point one way: `stores/` and `library/` never import each
  other or `daemon/`; `sync/` never imports `daemon/` or `cli/`.
- No backend leaks: `cli/` and `daemon/` reach the stores only through
  `objlib_daemon.stores` (the factories) and `stores.base` (the protocols),
  never a backend module; `stores/` never reads the config or the
  credentials (its callers hand it plain values).
- No import cycles among our modules, counting imports inside functions and
  under TYPE_CHECKING (`farm-studio look` draws the same arrows).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "objlib_daemon"
APPLIER = PACKAGE / "sync" / "applier.py"
# Columns of `files` whose assignment is a write of the row.
FILE_COLUMNS = frozenset(
    {
        "state",
        "document",
        "upload_sha256",
        "sha256",
        "size",
        "mtime_ns",
        "missing_since",
        "enrichment_version",
        "last_error",
        "attempts",
    }
)
STORE_MUTATIONS = frozenset({"upload", "delete"})


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _imports_file_model(tree: ast.Module) -> bool:
    return any(
        isinstance(node, ast.ImportFrom)
        and node.module == "objlib_daemon.state.models"
        and any(alias.name == "File" for alias in node.names)
        for node in ast.walk(tree)
    )


def file_writes(tree: ast.Module) -> list[str]:
    """Lines that write `files`: File(...), insert/update/delete(File), row.<column> = ..."""
    found = []
    uses_model = _imports_file_model(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id == "File":
                found.append(f"{node.lineno}: File(...)")
            if node.func.id in ("insert", "update", "delete") and any(
                isinstance(a, ast.Name) and a.id == "File" for a in node.args
            ):
                found.append(f"{node.lineno}: {node.func.id}(File)")
        if uses_model and isinstance(node, ast.Assign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for t in target.elts if isinstance(target, ast.Tuple) else [target]:
                    if isinstance(t, ast.Attribute) and t.attr in FILE_COLUMNS:
                        found.append(f"{node.lineno}: .{t.attr} = ...")
    return found


def store_mutations(tree: ast.Module, source: str) -> list[str]:
    """Calls of `<something store>.upload(...)` / `.delete(...)`."""
    found = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in STORE_MUTATIONS
            and "store" in (ast.get_source_segment(source, node.func.value) or "").lower()
        ):
            found.append(f"{node.lineno}: {ast.get_source_segment(source, node.func)}(...)")
    return found


def test_the_checks_see_a_violation() -> None:
    """The detectors themselves work (else the rule below would pass vacuously)."""
    bad = (
        "from objlib_daemon.state.models import File\n"
        "def f(s, row, ws):\n"
        "    s.add(File(path='x'))\n"
        "    row.state = 'indexed'\n"
        "    ws.store.delete('doc')\n"
    )
    tree = ast.parse(bad)
    assert len(file_writes(tree)) == 2
    assert len(store_mutations(tree, bad)) == 1


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_only_the_applier_writes_files_and_mutates_the_store(path: Path) -> None:
    if path == APPLIER or path.parent.name == "stores":  # the backends implement mutations
        return
    source = path.read_text()
    tree = ast.parse(source)
    assert file_writes(tree) == [], f"{path.name} writes the files table; ask the applier"
    assert store_mutations(tree, source) == [], f"{path.name} mutates the store; ask the applier"


BACKENDS = ("objlib_daemon.stores.gemini", "objlib_daemon.stores.local")
FORBIDDEN = {
    "stores": (
        "objlib_daemon.library",
        "objlib_daemon.daemon",
        "objlib_daemon.sync",
        "objlib_daemon.config",
        "objlib_daemon.credentials",
    ),
    "library": ("objlib_daemon.stores", "objlib_daemon.daemon", "objlib_daemon.sync"),
    "sync": ("objlib_daemon.daemon", "objlib_daemon.cli"),
    "cli": BACKENDS,
    "daemon": BACKENDS,
}


def imported(tree: ast.Module) -> list[str]:
    """Every module the source imports; `from a import b` counts as `a` and `a.b`
    (b may be a module: `from objlib_daemon.stores import gemini`)."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
            names += [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names]
    return names


def forbidden_imports(tree: ast.Module, folder: str) -> list[str]:
    return [
        name
        for name in imported(tree)
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[folder])
    ]


def test_the_import_check_sees_a_violation() -> None:
    for source in (
        "from objlib_daemon.stores.gemini import make_client",
        "from objlib_daemon.stores import local",
        "import objlib_daemon.stores.gemini",
    ):
        assert forbidden_imports(ast.parse(source), "cli"), source
    assert forbidden_imports(ast.parse("from objlib_daemon import config"), "stores")
    for allowed in ("from objlib_daemon.stores import open_store", "import objlib_daemon.stores"):
        assert forbidden_imports(ast.parse(allowed), "daemon") == [], allowed


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_dependencies_point_one_way(folder: str) -> None:
    for path in (PACKAGE / folder).rglob("*.py"):
        found = forbidden_imports(ast.parse(path.read_text()), folder)
        assert found == [], f"{path}: imports {', '.join(found)}"


README = PACKAGE.parent / "README.md"


def readme_layout() -> str:
    """The README's layout block: the ```-fenced block that starts `objlib_daemon/`."""
    text = README.read_text(encoding="utf-8")
    for block in text.split("```")[1::2]:
        if block.lstrip("\n").startswith("objlib_daemon/"):
            return block
    raise AssertionError("README.md has no layout block starting `objlib_daemon/`")


def test_the_readme_layout_matches_the_tree() -> None:
    """A newcomer finds every package and top-level module in the README's
    layout, and nothing there that the tree does not hold."""
    named = {
        word.rstrip("/")
        for line in readme_layout().splitlines()[1:]
        if line.startswith("  ") and not line.startswith("   ")
        for word in [line.split()[0]]
    }
    tree = {
        p.name
        for p in PACKAGE.iterdir()
        if (p.is_dir() and (p / "__init__.py").exists())
        or (p.suffix == ".py" and p.name not in ("__init__.py", "__main__.py"))
    }
    assert named == tree, (
        f"in the tree, not in the README: {sorted(tree - named)}; "
        f"in the README, not in the tree: {sorted(named - tree)}"
    )


@pytest.mark.parametrize(
    "package",
    sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()),
)
def test_each_package_says_its_one_job(package: str) -> None:
    tree = ast.parse((PACKAGE / package / "__init__.py").read_text(encoding="utf-8"))
    doc = ast.get_docstring(tree)
    assert doc, f"objlib_daemon/{package}/__init__.py has no docstring naming its job"
    assert len(doc.splitlines()[0]) <= 100


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(tree: ast.Module, known: set[str]) -> set[str]:
    """Our modules a module imports anywhere: at the top, in a function, or
    under TYPE_CHECKING (a reader follows those arrows too)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            # `from package import module` imports the module; any other name
            # comes from the package itself.
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found & known


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Groups of modules that import each other, directly or around a circle (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_check_sees_a_circle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    tree = ast.parse("from x.pkg import a, b\nif T:\n    import x.other\n")
    known = {"x.pkg", "x.pkg.a", "x.pkg.b", "x.other"}
    assert imported_modules(tree, known) == {"x.pkg.a", "x.pkg.b", "x.other"}


def test_no_import_cycles() -> None:
    """Modules that import each other cannot be read, tested or moved one at a
    time; the daemon's runner, jobs and answers once formed such a circle."""
    paths = modules()
    known = {module_name(p) for p in paths}
    graph = {module_name(p): imported_modules(ast.parse(p.read_text()), known) for p in paths}
    for name in graph:
        graph[name].discard(name)
    assert cycles(graph) == []


def test_every_document_the_code_cites_is_in_the_repository() -> None:
    """Docstrings cite pages under docs/: each must exist, and none may cite a
    reference page without its place (it lived outside the repository)."""
    import re

    repo = PACKAGE.parent
    sources = [*PACKAGE.rglob("*.py"), *(repo / "tests").glob("*.py")]
    sources += (repo / "bench").glob("*.py")
    cited: set[str] = set()
    bare: list[str] = []
    for path in sources:
        text = path.read_text(encoding="utf-8")
        cited |= set(re.findall(r"\bdocs/[\w-]+\.md", text))
        bare += [
            f"{path.name}: {m}"
            for m in re.findall(
                r"(?<![\w/.-])(?:design|platform-notes|gemini-file-search|library-facts)\.md", text
            )
        ]
    assert cited, "the check found no citation at all"
    assert not [c for c in cited if not (repo / c).is_file()], cited
    assert not bare, bare
