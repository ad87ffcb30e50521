"""JUnit XML for ``vtbench compare`` reports, so CI systems show each gated metric as a test case."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from vtbench.compare import Report, describe_failure
from vtbench.report import fmt

_XML_INVALID = re.compile("[^\u0009\u000a\u000d\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _x(value: Any) -> str:
    return _XML_INVALID.sub("\ufffd", "" if value is None else str(value))


def junit_xml(report: Report) -> ET.ElementTree:
    """One testsuite per (tokenizer, dataset), one testcase per metric: ``<failure>`` for regressions (and
    missing, unless allowed), ``<error>`` for incomparable, ``<skipped>`` for informational / new."""
    root = ET.Element("testsuites", name="vtbench compare")
    suites: dict[tuple[str, str], ET.Element] = {}
    if report.problems:
        suite = ET.SubElement(root, "testsuite", name="vtbench compare: inputs")
        case = ET.SubElement(suite, "testcase", classname="vtbench.compare", name="inputs")
        ET.SubElement(case, "error", type="incomparable", message=_x("; ".join(report.problems)))
        suites[("", "")] = suite
    for r in report.rows:
        suite = suites.get((r.tokenizer, r.dataset))
        if suite is None:
            suite = ET.SubElement(root, "testsuite", name=_x(f"{r.tokenizer} on {r.dataset}"))
            suites[(r.tokenizer, r.dataset)] = suite
        case = ET.SubElement(suite, "testcase", classname=_x(f"vtbench.{r.dataset}.{r.tokenizer}"),
                             name=_x(r.metric or "result"))
        summary = _x(f"{r.metric or 'result'}: baseline {fmt(r.baseline)}, new {fmt(r.new)}"
                     + (f", delta {r.delta:+.6g}" if r.delta is not None and math.isfinite(r.delta) else "")
                     + (f", allowed {r.tolerance:.6g}" if r.tolerance is not None else "")
                     + (f" ({r.note})" if r.note else ""))
        if r.status == "regressed" or (r.status == "missing" and not report.allow_missing):
            ET.SubElement(case, "failure", type=r.status, message=_x(describe_failure(r))).text = summary
        elif r.status == "incomparable":
            ET.SubElement(case, "error", type="incomparable", message=_x(r.note))
        elif r.status in ("info", "new", "missing"):
            ET.SubElement(case, "skipped", message=_x(f"{r.status}: {summary}"))
        else:
            ET.SubElement(case, "system-out").text = summary
    for suite in root:
        cases = suite.findall("testcase")
        counts = {tag: sum(c.find(tag) is not None for c in cases) for tag in ("failure", "error", "skipped")}
        suite.set("tests", str(len(cases)))
        for tag, attr in (("failure", "failures"), ("error", "errors"), ("skipped", "skipped")):
            suite.set(attr, str(counts[tag]))
    for attr in ("tests", "failures", "errors", "skipped"):
        root.set(attr, str(sum(int(s.get(attr, 0)) for s in root)))
    ET.indent(root)
    return ET.ElementTree(root)


def write_junit(report: Report, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    junit_xml(report).write(path, encoding="utf-8", xml_declaration=True)
    return path
