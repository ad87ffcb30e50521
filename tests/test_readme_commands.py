"""The README's two commands are the project's contract with a newcomer and with CI (`.ci/run`)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands():
    text = (ROOT / "README.md").read_text()
    section = text.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section)


def test_readme_has_two_commands_and_ci_runs_the_test_one():
    commands = _readme_commands()
    assert len(commands) == 2, commands
    run_cmd, test_cmd = commands
    assert "vtbench run" in run_cmd and "pytest" in test_cmd
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_cmd in ci, "`.ci/run` must run exactly the README's test command"


def test_install_commands_pin_torch_through_constraints():
    # An unpinned torch resolves to the registry's newest release; both commands install with the constraints file.
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.strip()] = version.strip()
    assert {"torch", "torchvision"} <= set(pins)
    for cmd in _readme_commands():
        assert "-c constraints.txt" in cmd, cmd
