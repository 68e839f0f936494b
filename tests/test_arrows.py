"""The dependency arrows of DESIGN.md, checked: edge never loads torch; no package imports against the arrows."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FORBIDDEN = {
    "protocol": {"edge", "trainer", "deploy", "torch", "torchvision", "cv2", "onnxruntime"},
    "edge": {"trainer", "deploy", "torch", "torchvision"},
    "trainer": {"edge", "deploy"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_against_the_arrows(package: str) -> None:
    offenders = []
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = _imports(path) & FORBIDDEN[package]
        if bad:
            offenders.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert not offenders, "\n".join(offenders)


def test_edge_runs_without_torch() -> None:
    """Import every edge module in a fresh interpreter and check torch never got loaded."""
    modules = sorted(
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for p in (ROOT / "edge").rglob("*.py")
    )
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'torchvision', 'trainer', 'deploy'})\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"edge pulled in: {result.stdout} {result.stderr}"


def test_cli_help_lists_every_subcommand() -> None:
    result = subprocess.run([sys.executable, "-m", "deploy.cli", "--help"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0
    for name in ("edge", "trainer", "rollout", "demo", "broker", "keys", "bench"):
        assert f"  {name} " in result.stdout


def test_cli_unknown_command_fails_clearly() -> None:
    result = subprocess.run([sys.executable, "-m", "deploy.cli", "frobnicate"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert "unknown command 'frobnicate'" in result.stderr

