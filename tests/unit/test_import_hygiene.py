"""Layering, enforced: the protocol cores do no I/O, read no clock, know no UI (DESIGN.md).

Each core package is imported in a fresh interpreter; the modules it pulls in
must not include sockets, event loops, clocks, threads, processes, or the
products built on top of the cores. Third-party dependencies are imported
first, so only what the core itself adds is judged.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CORE_PACKAGES = ("common.esp", "common.wire", "common.ike")
FORBIDDEN = (
    "socket",
    "asyncio",
    "select",
    "selectors",
    "threading",
    "subprocess",
    "time",
    "textual",
    "client",
    "concentrator",
    "common.dataplane",
    "common.hostnet",
)
# Third-party modules the cores may use; what they import is theirs, not ours
# (cryptography.x509 pulls in socket through the standard library's email.utils).
PRELOADED = (
    "import cryptography.hazmat.primitives.ciphers.aead, cryptography.x509, "
    "cryptography.x509.verification, nacl.bindings, hashlib, hmac, struct, enum"
)


def _core_modules() -> list[str]:
    modules = []
    for package in CORE_PACKAGES:
        folder = REPO.joinpath(*package.split("."))
        modules.append(package)
        for path in sorted(folder.rglob("*.py")):
            relative = path.relative_to(REPO).with_suffix("")
            modules.append(".".join(relative.parts))
    return [m for m in modules if not m.endswith("__init__")]


@pytest.mark.parametrize("module", _core_modules())
def test_core_module_pulls_in_no_io(module: str) -> None:
    script = (
        f"import sys, json; {PRELOADED}; before = set(sys.modules); "
        f"import {module}; print(json.dumps(sorted(set(sys.modules) - before)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True
    )
    added = json.loads(result.stdout)
    offending = [m for m in added if m in FORBIDDEN or m.split(".")[0] in FORBIDDEN]
    offending += [m for m in added if any(m.startswith(f + ".") for f in FORBIDDEN)]
    assert not offending, f"{module} imports {sorted(set(offending))}"


def test_core_sources_never_name_forbidden_modules() -> None:
    """Catches imports hidden inside functions, which an import-time check cannot see."""
    problems = []
    for package in CORE_PACKAGES:
        for path in REPO.joinpath(*package.split(".")).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names: list[str] = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                for name in names:
                    if (
                        name in FORBIDDEN
                        or name.split(".")[0] in FORBIDDEN
                        or any(name.startswith(f + ".") for f in FORBIDDEN)
                    ):
                        problems.append(f"{path.relative_to(REPO)}: {name}")
    assert not problems
