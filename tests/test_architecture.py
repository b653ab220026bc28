"""The house as ARCHITECTURE.md draws it: the folders it names exist, every package of the
code is named there, the imports form no circle, and the core never imports the web layer."""

from __future__ import annotations

import ast
import os
import re
from collections import defaultdict
from typing import Dict, List, Set

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("web", "whisper_service")
LISTING = re.compile(r"^(\s*)([\w./]+/)(?=\s)", re.M)


def _listing() -> str:
    text = open(os.path.join(ROOT, "ARCHITECTURE.md"), encoding="utf-8").read()
    return text.split("## The rooms", 1)[1].split("```", 2)[1]


def _named_folders() -> Set[str]:
    """Folders of the listing, as paths from the root: a line's folder sits in the folder
    of the nearest line above it indented less."""
    folders: Set[str] = set()
    stack: List[tuple] = []  # (indent, path)
    for match in LISTING.finditer(_listing()):
        indent = len(match.group(1))
        for name in match.group(2).split():
            while stack and stack[-1][0] >= indent:
                stack.pop()
            parent = stack[-1][1] if stack else ""
            path = parent + name
            folders.add(path.rstrip("/"))
            stack.append((indent, path))
    return folders


def _modules() -> Dict[str, str]:
    """Every module of the project: dotted name -> file."""
    found = {"app": os.path.join(ROOT, "app.py")}
    for package in PACKAGES:
        for folder, dirs, files in os.walk(os.path.join(ROOT, package)):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    dotted = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                    found[dotted.removesuffix(".__init__")] = path
    return found


def _imports(modules: Dict[str, str]) -> Dict[str, Set[str]]:
    """module -> the project's modules it imports (at any depth of the file: a function's
    import is an edge too). Importing `a.b.c` also runs the `__init__` of `a` and `a.b`,
    so those are edges as well, but for the importer's own packages (already running)."""
    graph: Dict[str, Set[str]] = defaultdict(set)
    for name, path in modules.items():
        package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
        own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
            targets: List[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    parts = parts[: len(parts) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                # a submodule imported by name is an edge to it, any other name to `base`
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules
                           else base for alias in node.names]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                parts = target.split(".")
                for depth in range(1, len(parts) + 1):
                    step = ".".join(parts[:depth])
                    if step in modules and step != name and step not in own:
                        graph[name].add(step)
    return graph


def _cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_every_folder_the_architecture_names_exists():
    named = _named_folders()
    assert {"web/api", "web/live", "whisper_service/engines/decoding",
            "whisper_service/queue/store"} <= named  # the listing was read
    missing = sorted(path for path in named if not os.path.isdir(os.path.join(ROOT, path)))
    assert missing == []


def test_every_package_of_the_code_is_in_the_architecture():
    named = _named_folders()
    packages = {os.path.dirname(os.path.relpath(path, ROOT))
                for path in _modules().values() if path.endswith("__init__.py")}
    assert sorted(packages - named) == []


def test_the_imports_form_no_circle():
    graph = _imports(_modules())
    assert graph["web.api.sagemaker"] >= {"web.api.native", "web.api.jumpstart"}  # edges seen
    assert _cycles(graph) == []


def test_a_circle_would_be_found():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_a_package_init_that_imports_back_is_a_circle(tmp_path, monkeypatch):
    """models -> engines.vad runs engines/__init__; if that imports engines.batched, which
    imports models, Python fails on the partly initialised module: that is a circle."""
    files = {"whisper_service/__init__.py": "",
             "whisper_service/models.py": "from whisper_service.engines import vad\n",
             "whisper_service/engines/__init__.py": "from whisper_service.engines import batched\n",
             "whisper_service/engines/vad.py": "",
             "whisper_service/engines/batched.py": "from whisper_service.models import X\n"}
    modules = {}
    for relative, text in files.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        dotted = relative[:-3].replace("/", ".").removesuffix(".__init__")
        modules[dotted] = str(path)
    assert _cycles(_imports(modules)) == [[
        "whisper_service.engines", "whisper_service.engines.batched", "whisper_service.models"]]


def test_the_core_never_imports_the_web_layer_or_flask():
    modules = _modules()
    for name, path in modules.items():
        if not name.startswith("whisper_service"):
            continue
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
            if isinstance(node, ast.Import):
                roots = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                roots = [(node.module or "").split(".")[0]]
            else:
                continue
            assert not {"web", "flask", "flask_sock", "werkzeug"} & set(roots), (name, roots)
