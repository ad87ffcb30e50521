"""A built wheel evaluates like the checkout: it carries every card, protocol, embedded data file and tiny weight
(under vtbench/_declarations/), and vtbench installed from it finds them (tests/test_compat.py: Python 3.10).

The wheel is built from a copy of the checkout (``pip wheel`` builds in the source tree: a stale ``build/lib``
there would leak into it, and the test must not write into the repository).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vtbench.cli import app
from vtbench.config import all_cards
from vtbench.leaderboard.view import SPEED  # outputs that measure the machine: they differ between two runs
from vtbench.paths import REPO_ROOT

pytestmark = pytest.mark.skipif(REPO_ROOT is None,
                                reason="builds a wheel from the checkout; this is an installed vtbench")

SHIPPED = "vtbench/_declarations"
# Checkout folder -> where the wheel holds it (pyproject.toml's [tool.setuptools.package-dir]).
DECLARATION_FOLDERS = {"tokenizers": f"{SHIPPED}/tokenizers", "metrics": f"{SHIPPED}/metrics",
                       "data/embedded": f"{SHIPPED}/data/embedded"}


def _files(root: Path, pattern: str = "*") -> list[Path]:
    """Files under ``root`` matching ``pattern`` (recursively), less caches and hidden files."""
    return sorted(p for p in root.rglob(pattern) if p.is_file() and "__pycache__" not in p.parts
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def checkout_files() -> dict[str, str]:
    """Wheel path -> checkout path (relative to the repository) of every file the wheel must carry."""
    want = {}
    for folder, shipped in DECLARATION_FOLDERS.items():
        for p in _files(REPO_ROOT / folder):
            want[f"{shipped}/{p.relative_to(REPO_ROOT / folder).as_posix()}"] = p.relative_to(REPO_ROOT).as_posix()
    for p in _files(REPO_ROOT / "vtbench", "*.py"):
        rel = p.relative_to(REPO_ROOT).as_posix()
        want[rel] = rel
    return want


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    pytest.importorskip("setuptools")
    src = tmp_path_factory.mktemp("src") / "vtbench"
    shutil.copytree(REPO_ROOT, src, ignore=shutil.ignore_patterns(
        ".git", "build", "dist", "*.egg-info", "__pycache__", ".venv", "venv", ".pytest_cache", "results", "runs"))
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(out), str(src)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    (whl,) = out.glob("vtbench-*.whl")
    return whl


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """The wheel installed with ``pip install --target``: put on PYTHONPATH, it shadows the editable vtbench."""
    target = tmp_path_factory.mktemp("target")
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                        str(wheel)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return target


def run_installed(target: Path, cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """``python *args`` with only the installed wheel on PYTHONPATH, from ``cwd`` (outside the repository)."""
    environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VTBENCH_HOME")}
    r = subprocess.run([sys.executable, *args], cwd=cwd, env={**environ, "PYTHONPATH": str(target), **env},
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def test_wheel_carries_every_declaration_and_module(wheel):
    want = checkout_files()
    assert any(k.endswith(".safetensors") for k in want) and any(k.endswith("MANIFEST.csv") for k in want)
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        missing = sorted(k for k in want if k not in names)
        assert not missing, f"the wheel lacks {missing} (pyproject.toml: packages / package-data)"
        changed = [k for k in want if zf.read(k) != (REPO_ROOT / want[k]).read_bytes()]
        assert not changed, changed
    # Nothing outside the package: a top-level 'tokenizers' would shadow Hugging Face's; the embedded set's
    # generator script is not a module of vtbench.
    assert all(n.startswith(("vtbench/", "vtbench-")) for n in names), sorted(names)[:20]
    assert not any(n.endswith("make_embedded.py") for n in names)
    extra = sorted(n for n in names if n.startswith(f"{SHIPPED}/") and n not in want)
    assert not extra, extra


def test_installed_wheel_finds_its_declarations(installed, tmp_path):
    out = run_installed(installed, tmp_path, "-c", "import vtbench.paths as p; print(p.__file__); "
                        "print(p.REPO_ROOT); print(p.DECLARATIONS_ROOT)").stdout.splitlines()
    shipped = installed / "vtbench" / "_declarations"
    assert out == [str(installed / "vtbench" / "paths.py"), "None", str(shipped)]
    home = run_installed(installed, tmp_path, "-c", "import vtbench.paths as p; print(p.CARDS_DIR)",
                         VTBENCH_HOME=str(tmp_path / "home")).stdout.strip()
    assert home == str(tmp_path / "home" / "tokenizers")  # the override still wins over the wheel's copy

    rows = [row for task in ("image", "shape") for row in json.loads(run_installed(
        installed, tmp_path, "-m", "vtbench.cli", "ls", "tokenizers", "--task", task, "--json").stdout)]
    assert sorted(t["name"] for t in rows) == sorted(all_cards()) and len(rows) > 10  # the checkout's cards
    bundled = {t["name"]: t["weights_local"] for t in rows if t["name"].startswith("tiny.")}
    assert bundled and all(Path(p).is_relative_to(shipped / "tokenizers" / "weights") for p in bundled.values())


@pytest.mark.slow  # two runs with rFID's Inception: about 35 s
def test_installed_wheel_runs_like_the_checkout(installed, tmp_path):
    (tmp_path / "cwd").mkdir()
    args = ["run", "-t", "jpeg.q50", "-t", "tiny.vq", "--limit", "2", "--json"]
    wheel_out = run_installed(installed, tmp_path / "cwd", "-m", "vtbench.cli", *args, "--out", str(tmp_path / "w"))
    theirs = json.loads(wheel_out.stdout)["runs"]
    r = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "c")])
    assert r.exit_code == 0, r.output
    ours = json.loads(r.stdout)["runs"]
    assert [x["tokenizer"] for x in theirs] == [x["tokenizer"] for x in ours] == ["jpeg.q50", "tiny.vq"]
    for a, b in zip(theirs, ours):
        assert a["n"] == b["n"] == 2 and a["dataset"] == b["dataset"] == "embedded"
        assert {k: v for k, v in a["metrics"].items() if k not in SPEED} == \
               {k: v for k, v in b["metrics"].items() if k not in SPEED}
        assert a["metrics"]["psnr"] is not None and a["metrics"]["rfid"] is not None
    record = json.loads(next((tmp_path / "w").rglob("tiny.vq/*/result.json")).read_text())
    assert Path(record["tokenizer"]["weights_path"]).is_relative_to(installed)
    assert record["vtbench"]["commit"] is None  # an installed wheel is no checkout
