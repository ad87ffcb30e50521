"""Commands that only parse, list or check names answer without importing torch (or pandas, numpy, the
runner, metrics or adapters): a misspelt name or ``--help`` must not pay tens of seconds of imports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "pandas", "numpy", "vtbench.runner", "vtbench.metrics", "vtbench.tokenizers.base")
COMMANDS = [["--help"], ["--version"], ["run", "--help"], ["ls", "tokenizers"], ["info", "jpeg.q50"],
            ["run", "-t", "jpg.q50"], ["ls", "tokenizers", "--cards", str(ROOT / "examples" / "custom_tokenizer")],
            ["info", "mytok.v1", "--cards", str(ROOT / "examples" / "custom_tokenizer")], ["ls", "protocols"]]

# runs each command in turn in one interpreter; after each, which heavy modules are loaded and the exit code
PROBE = """
import json, runpy, sys
out = []
for argv in json.loads(sys.argv[1]):
    sys.argv = ["vtbench", *argv]
    code = 0
    try:
        runpy.run_module("vtbench.cli", run_name="__main__")
    except SystemExit as exc:
        code = exc.code
    out.append({"argv": argv, "code": code, "heavy": [m for m in HEAVY if m in sys.modules]})
print("RESULT" + json.dumps(out))
"""


def run_commands(commands: list[list[str]]) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("VTBENCH_CARDS", None)
    proc = subprocess.run([sys.executable, "-c", f"HEAVY = {HEAVY!r}\n" + PROBE, json.dumps(commands)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


def test_parse_list_and_check_commands_import_no_torch(tmp_path):
    # the last command builds a tokenizer, so the probe must see torch there: it is not blind
    needs_torch = ["run", "-t", "identity.none", "--metrics", "psnr", "--out", str(tmp_path), "--data",
                   str(tmp_path / "no-such-folder")]
    *results, last = run_commands(COMMANDS + [needs_torch])
    assert [r["argv"] for r in results] == COMMANDS
    for r in results:
        assert r["heavy"] == [], r
    codes = {" ".join(r["argv"][:2]): r["code"] for r in results}
    assert codes["run -t"] == 2  # did-you-mean, before the runner is imported
    assert all(c in (0, None) for k, c in codes.items() if k != "run -t"), codes
    assert "torch" in last["heavy"] and last["code"] not in (0, None)
