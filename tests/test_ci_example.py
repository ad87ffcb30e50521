"""examples/ci end to end: the workflow's own `vtbench run` / `vtbench compare` lines on the embedded data.

The committed checkpoint must pass against the committed baseline; an honestly worse checkpoint (the same tiny
VQ trained for 60 steps instead of 2000: an early checkpoint, not a doctored file) must be caught.
"""

import json
import os
import re
import shlex
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vtbench.cli import app
from vtbench.config import get_card
from vtbench.paths import DECLARATIONS_ROOT, REPO_ROOT

EXAMPLE = REPO_ROOT / "examples" / "ci"
WORKFLOW = EXAMPLE / "github-workflow.yml"
BASELINE = EXAMPLE / "baseline"
runner = CliRunner()


def _command(text: str, subcommand: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip().startswith(f"vtbench {subcommand} ")]
    assert len(lines) == 1, f"expected one `vtbench {subcommand}` line, found {lines}"
    return lines[0]


def workflow_args(subcommand: str, env: dict[str, str]) -> list[str]:
    """The workflow's command line with its environment variables substituted, as CLI arguments."""
    line = re.sub(r"\$\{?(\w+)\}?", lambda m: env[m.group(1)], _command(WORKFLOW.read_text(), subcommand))
    args = shlex.split(line)
    assert args[:2] == ["vtbench", subcommand]
    return args[1:]


def gate(tmp_path: Path, checkpoint: Path):
    env = {"CHECKPOINT": str(checkpoint), "RESULTS": str(tmp_path / "results-new"), "BASELINE": str(BASELINE),
           "REPORT": str(tmp_path / "report.xml")}
    r = runner.invoke(app, workflow_args("run", env) + ["--quiet"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, workflow_args("compare", env) + ["--json"])
    return r, json.loads(r.stdout), ET.parse(env["REPORT"]).getroot()


def test_baseline_is_what_the_workflow_runs():
    # make_baseline.sh and the workflow run the same line; the baseline holds only what vtbench wrote
    assert _command((EXAMPLE / "make_baseline.sh").read_text(), "run") == _command(WORKFLOW.read_text(), "run")
    files = sorted(p.relative_to(BASELINE).as_posix() for p in BASELINE.rglob("*") if p.is_file())
    assert files == ["embedded/tiny.vq/reconstruction/result.json", "embedded/tiny.vq/reconstruction/samples.csv"]
    rec = json.loads((BASELINE / "embedded" / "tiny.vq" / "reconstruction" / "result.json").read_text())
    assert rec["tokenizer"]["weights_sha256"] == get_card("tiny.vq").weights["sha256"]  # the committed checkpoint
    assert rec["run"]["metrics_selected"] == ["psnr", "ssim", "compression"] and rec["dataset"]["n_used"] == 24
    assert os.access(EXAMPLE / "make_baseline.sh", os.X_OK)


def test_workflow_file_is_valid_yaml():
    yaml = pytest.importorskip("yaml")
    doc = yaml.safe_load(WORKFLOW.read_text())
    steps = doc["jobs"]["gate"]["steps"]
    assert any("actions/upload-artifact" in s.get("uses", "") and s.get("if") == "always()" for s in steps)


def test_unchanged_checkpoint_passes(tmp_path):
    r, report, junit = gate(tmp_path, DECLARATIONS_ROOT / get_card("tiny.vq").weights["bundled"])
    assert r.exit_code == 0, report["verdict"]
    psnr = next(x for x in report["rows"] if x["metric"] == "psnr")
    assert psnr["status"] == "ok" and psnr["delta"] == pytest.approx(0.0, abs=1e-6)
    assert junit.get("failures") == "0" and junit.get("errors") == "0" and int(junit.get("tests")) >= 4


def test_worse_checkpoint_is_caught(tmp_path):
    from vtbench.tokenizers.tiny_train import train
    worse = tmp_path / "tiny_vq_step60.safetensors"
    train(kind="vq", steps=60, seed=0, out=worse, log_every=0)
    r, report, junit = gate(tmp_path, worse)
    assert r.exit_code == 1, report["verdict"]
    rows = {x["metric"]: x for x in report["rows"]}
    assert rows["psnr"]["status"] == "regressed" and rows["psnr"]["delta"] < -1.0
    assert rows["bpp"]["status"] == "ok"  # same architecture, same rate: only quality moved
    assert report["pairs"][0]["new_weights"] != report["pairs"][0]["baseline_weights"]
    failed = {c.get("name") for c in junit.iter("testcase") if c.find("failure") is not None}
    assert "psnr" in failed and "bpp" not in failed
