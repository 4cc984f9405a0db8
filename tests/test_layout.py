"""The tree shows the architecture, and keeps showing it: the platform (`facestream/`) imports no
service, no service imports another, there are no import cycles (function-level imports count),
every package opens with a docstring, every folder says what lives in it, and the README's layout
names every part of the tree."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from facestream.services.main import SERVICES as PIPELINE
from tests.conftest import ROOT

SERVICES = tuple(s.name for s in PIPELINE)  # the four stages and the API


def _modules() -> dict[str, Path]:
    """Every module of the installed package, by dotted name (services under facestream.services)."""
    found: dict[str, Path] = {}
    for base, prefix in ((ROOT / "facestream", "facestream"), (ROOT / "services", "facestream.services")):
        for path in base.rglob("*.py"):
            if base.name == "facestream" and path.relative_to(base).parts[0] == "services":
                continue  # the link to services/, read once from there
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([prefix, *parts])] = path
    return found


def _imports(name: str, path: Path) -> Iterator[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield base
            yield from (f"{base}.{a.name}" for a in node.names)


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for target in _imports(name, path):
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                targets.add(target)
        graph[name] = targets
    return graph


def _service(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[1] == "services" and parts[2] in SERVICES else None


def test_platform_imports_no_service_and_services_not_each_other() -> None:
    wrong = []
    for module, targets in _graph().items():
        for target in targets:
            if not module.startswith("facestream.services") and target.startswith("facestream.services"):
                wrong.append(f"platform {module} imports {target}")
            own, theirs = _service(module), _service(target)
            if own and theirs and own != theirs:
                wrong.append(f"service {module} imports another service's {target}")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_cycles() -> None:
    graph = _graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*trail[trail.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_every_package_and_folder_says_what_it_holds() -> None:
    for path in _modules().values():
        if path.name == "__init__.py" or path.parent.name in SERVICES:
            tree = ast.parse(path.read_text())
            assert ast.get_docstring(tree), f"{path.relative_to(ROOT)} has no docstring"
    for folder in ("contracts", "deploy", "scripts", "kafka", "models", "bench", "tests", "samples"):
        assert any((ROOT / folder).glob("*.md")), f"{folder}/ has no README"
    assert ast.get_docstring(ast.parse((ROOT / "devtools" / "__init__.py").read_text()))


def test_readme_layout_names_every_part() -> None:
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout") :]
    layout = layout[: layout.index("\n## ", 4)]
    subpackages = [p.name for p in (ROOT / "facestream").iterdir() if (p / "__init__.py").exists()]
    folders = [p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != "build"]
    ignored = {"facestream.egg-info", "out", "__pycache__"}
    for name in [*subpackages, *SERVICES, *(f for f in folders if f not in ignored)]:
        assert re.search(rf"\b{re.escape(name)}/", layout), f"README layout does not name {name}/"


def test_commands_and_workers_start_without_the_optional_clients() -> None:
    """Every command and worker imports services/main.py; qdrant-client (0.7 s), onnx (80 ms) and
    OpenVINO (0.2 s) are imported only where a server gallery, a detector or an embedder is made,
    not by every start."""
    probe = "import sys, facestream.services.main; print(sorted({m.split('.')[0] for m in sys.modules}))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True)
    modules = set(ast.literal_eval(loaded.stdout))
    assert "facestream" in modules
    assert not modules & {"qdrant_client", "onnx", "openvino"}
