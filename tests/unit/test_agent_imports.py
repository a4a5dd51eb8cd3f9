"""Import boundaries of the agent, read with `ast` (nothing is imported; relative imports are
resolved against the module's own package):

- the agent never imports the ComfyUI simulator: `sim/` is a test and demo tool, not agent code;
- the pure core of the ComfyUI driver (event types, tracker, /history, seeds, outcome rule)
  imports nothing that does I/O, only pure stdlib modules and each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
AGENT = ROOT / "agent"
FORBIDDEN = "comfyfleet.sim"


def imported_modules(path: Path, agent_root: Path = AGENT) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                # comfyfleet.agent[.sub...]: the package that holds this file
                package = ["comfyfleet", "agent", *path.parent.relative_to(agent_root).parts]
                base = package[: len(package) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            # `from comfyfleet import sim` names the package in the imported names
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return found


def _is_forbidden(module: str) -> bool:
    return module == FORBIDDEN or module.startswith(FORBIDDEN + ".")


def test_agent_modules_do_not_import_the_simulator() -> None:
    files = sorted(AGENT.rglob("*.py"))
    assert files, "no agent modules found"
    offenders: dict[str, str] = {}  # one report per import statement
    for path in files:
        for line, module in imported_modules(path):
            if _is_forbidden(module):
                offenders.setdefault(f"{path.relative_to(ROOT)}:{line}", module)
    assert offenders == {}, "the agent must not import the simulator:\n" + "\n".join(
        f"{where} imports {module}" for where, module in offenders.items()
    )


def test_the_check_sees_every_spelling(tmp_path: Path) -> None:
    """The walker resolves absolute, from-, and relative spellings of an import of the simulator."""
    spellings = {
        "import comfyfleet.sim.server": True,
        "from comfyfleet.sim import SimConfig": True,
        "from comfyfleet import sim": True,
        "from ...sim.config import SimConfig": True,
        "from .. import sim": False,  # comfyfleet.agent.sim: not the simulator any more
        "from comfyfleet.simple import x": False,
        "import comfyfleet.shared.status": False,
    }
    for source, forbidden in spellings.items():
        fake = tmp_path / "agent" / "comfyui" / "client.py"
        fake.parent.mkdir(parents=True, exist_ok=True)
        fake.write_text(source + "\n")
        hits = [m for _, m in imported_modules(fake, tmp_path / "agent") if _is_forbidden(m)]
        assert bool(hits) is forbidden, (source, hits)


PURE_COMFYUI = ("events", "tracker", "history", "seeds", "outcome")
PURE_STDLIB = {"__future__", "collections.abc", "copy", "dataclasses", "json", "random"}
PURE_STDLIB |= {"struct", "typing"}


def _impure_imports(path: Path) -> list[str]:
    allowed = PURE_STDLIB | {f"comfyfleet.agent.comfyui.{name}" for name in PURE_COMFYUI}
    bad: dict[int, str] = {}  # one report per import statement
    for line, module in imported_modules(path):
        # `from X import name` also yields X.name: the names of an allowed X are allowed
        if module not in allowed and module.rsplit(".", 1)[0] not in allowed:
            bad.setdefault(line, f"{path.relative_to(ROOT)}:{line} imports {module}")
    return list(bad.values())


def test_the_pure_comfyui_core_imports_no_io() -> None:
    offenders = [
        bad for name in PURE_COMFYUI for bad in _impure_imports(AGENT / "comfyui" / f"{name}.py")
    ]
    assert offenders == [], "pure modules must not import I/O:\n" + "\n".join(offenders)
