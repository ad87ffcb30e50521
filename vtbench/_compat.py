"""Standard-library modules that older supported Pythons lack, under one name each.

``tomllib`` is Python 3.11's TOML reader; on 3.10 its backport ``tomli`` (a dependency there, same API) stands in.
Every TOML read in vtbench imports it from here (``from vtbench._compat import tomllib``).
"""

from __future__ import annotations

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

__all__ = ["tomllib"]
