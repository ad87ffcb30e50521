"""Plots for the leaderboard as inline SVG strings (matplotlib, Agg-free SVG canvas, no pyplot state).

Two figures per section: quality versus bits per pixel (rate-distortion, log x; one line per rate sweep, a
marker per single tokenizer) and quality versus tokens per image (token-based tokenizers only). Numbers reported by
the authors are drawn hollow on dotted lines, in the colour of the measured series of the same tokenizers.

Any finite value plots: axis limits are set here in a way that cannot overflow (log-space margins for the rate
axes; values beyond 1e15 in magnitude are drawn in units of a power of ten named in the axis label), so a record
holding 1e308 still gets its figure.

Labels come from result records, so the SVG is made safe to inline: text is drawn as glyph paths
(``svg.fonttype = 'path'``: no fonts needed in the browser, and no record string survives as SVG text), the
comments matplotlib writes with each string are removed, mathtext is off (a ``$`` in a name is just a
character), and every id is prefixed per plot so several inline SVGs in one page never share an id.
"""

from __future__ import annotations

import io
import math
import re
import sys

from vtbench.leaderboard.view import Column, Section, Series

# Learned tokenizers get strong colours; references (identity, resize, codecs) muted greys and dashed lines.
_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#bcbd22")
_REF_COLOURS = ("#555555", "#888888", "#aaaaaa", "#333333", "#777777")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">")
_MAX_LABEL = 40
_BIG = 1e15  # beyond this magnitude, a quality axis is drawn in units of 10^k (the tick locator overflows near 1e308)


def _rc(salt: str) -> dict[str, object]:
    return {"svg.fonttype": "path", "svg.hashsalt": salt, "text.parse_math": False, "text.usetex": False,
            "font.size": 9, "axes.titlesize": 10, "axes.spines.top": False, "axes.spines.right": False,
            "axes.grid": True, "grid.alpha": 0.3, "legend.fontsize": 8, "legend.frameon": False}


def _label(text: str) -> str:
    text = text if len(text) <= _MAX_LABEL else text[: _MAX_LABEL - 1] + "…"
    return " " + text if text.startswith("_") else text  # legend() drops labels starting with "_"


def _axis_label(col: Column) -> str:
    arrow = {True: " ↑", False: " ↓", None: ""}[col.higher_is_better]
    return f"{col.header}{f' ({col.unit})' if col.unit else ''}{arrow}"


def safe_inline_svg(svg: str, prefix: str) -> str:
    """matplotlib's SVG document -> an ``<svg>`` element for inlining: no prolog, no comments, ids prefixed."""
    svg = svg[svg.index("<svg"):]
    svg = re.sub(r"<!--.*?-->", "", svg, flags=re.S)
    svg = re.sub(r'\bid="([^"]+)"', lambda m: f'id="{prefix}-{m.group(1)}"', svg)
    svg = re.sub(r'href="#([^"]+)"', lambda m: f'href="#{prefix}-{m.group(1)}"', svg)
    svg = re.sub(r"url\(#([^)]+)\)", lambda m: f"url(#{prefix}-{m.group(1)})", svg)
    return svg.replace("<svg ", '<svg class="plot" role="img" ', 1)


def _log_limits(xs: list[float]) -> tuple[float, float]:
    """Log-axis limits around ``xs`` (all > 0) with a margin, computed in log space so 1e308 cannot overflow."""
    lo, hi = math.log10(min(xs)), math.log10(max(xs))
    pad = max(0.3, 0.08 * (hi - lo))  # a lone rate (every tokenizer at 1024 tokens): centred on a decade and a half
    return 10 ** max(lo - pad, -307.6), 10 ** min(hi + pad, 308.2)  # within the normal floats (max 1.8e308)


def _y_scale(ys: list[float]) -> tuple[float, str]:
    """A divisor that keeps a quality axis within ordinary magnitudes, and its label suffix ("" when 1)."""
    big = max((abs(y) for y in ys), default=0.0)
    if big <= _BIG:
        return 1.0, ""
    k = int(math.floor(math.log10(big)))
    return 10.0 ** k, f" (×1e{k})"


def _figure(series: list[Series], cols: list[Column], x: str, xlabel: str, salt: str) -> str | None:
    """One row of subplots (one per quality column) sharing a legend; None when there is nothing to draw."""
    import matplotlib
    import numpy as np
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    def xy(s: Series, key: str) -> tuple[list[float], list[float]]:
        pts = [(getattr(p, x), p.values[key]) for p in s.points if getattr(p, x) is not None and key in p.values
               and math.isfinite(getattr(p, x)) and getattr(p, x) >= sys.float_info.min  # normal positive floats
               and math.isfinite(p.values[key])]
        return [a for a, _ in pts], [b for _, b in pts]

    cols = [c for c in cols if any(xy(s, c.key)[0] for s in series)]
    drawn = [s for s in series if any(xy(s, c.key)[0] for c in cols)]
    if not cols or not drawn:
        return None
    colours: dict[str, str] = {}
    n_learned = n_ref = 0
    for s in drawn:  # measured series first take colours; a reported series reuses its measured twin's
        if s.key in colours:
            continue
        if s.reference:
            colours[s.key] = _REF_COLOURS[n_ref % len(_REF_COLOURS)]
            n_ref += 1
        else:
            colours[s.key] = _COLOURS[n_learned % len(_COLOURS)]
            n_learned += 1
    # near the ends of the float range matplotlib's log transforms overflow in their own margins (harmlessly)
    with matplotlib.rc_context(_rc(salt)), np.errstate(over="ignore", under="ignore", invalid="ignore"):
        fig = Figure(figsize=(3.4 * len(cols) + 0.4, 3.4), layout="constrained")
        axes = fig.subplots(1, len(cols), squeeze=False)[0]
        handles: dict[str, object] = {}
        scales = {c.key: _y_scale([y for s in drawn for y in xy(s, c.key)[1]]) for c in cols}
        for i, s in enumerate(drawn):
            style: dict[str, object] = dict(color=colours[s.key], linestyle="-")
            if s.reference:
                style.update(linestyle="--", alpha=0.9)
            if s.reported:  # the authors' numbers: hollow markers on a dotted line
                style.update(linestyle=":", markerfacecolor="none", markeredgewidth=1.4)
            for ax, col in zip(axes, cols):
                xs, ys = xy(s, col.key)
                if xs:
                    div = scales[col.key][0]
                    (h,) = ax.plot(xs, [y / div for y in ys], marker=_MARKERS[i % len(_MARKERS)], markersize=5,
                                   linewidth=1.4, label=_label(s.label), clip_on=False, **style)
                    handles.setdefault(_label(s.label) + f"\x00{i}", h)
        for ax, col in zip(axes, cols):
            ax.set_xscale("log")
            xs = [v for s in drawn for v in xy(s, col.key)[0]]
            ys = [v / scales[col.key][0] for s in drawn for v in xy(s, col.key)[1]]
            lo, hi = _log_limits(xs)
            ax.set_xlim(lo, hi)
            if ys:
                y0, y1 = min(ys), max(ys)
                pad = (y1 - y0) * 0.08 or max(abs(y0) * 0.1, 1.0)
                ax.set_ylim(y0 - pad, y1 + pad)
            # plain tick labels ("0.2", "1", "10"; the default log labels are mathtext, which is off here),
            # at 1-2-5 steps unless the axis spans many decades, so a narrow range still gets labels
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if hi / lo <= 1e3 else (1.0,)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel(xlabel)
            ax.set_ylabel(_axis_label(col) + scales[col.key][1])
            ax.set_title(col.header)
        labels = [k.split("\x00")[0] for k in handles]
        fig.legend(list(handles.values()), labels, loc="outside lower center", ncol=min(5, len(labels)))
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    return safe_inline_svg(buf.getvalue(), salt)


def unplaced(section: Section) -> int:
    """Reported numbers of a section's plotted metrics that have no measured rate to be placed at."""
    keys = {c.key for c in section.quality_columns()}
    return sum(1 for s in section.series if s.reported for p in s.points
               if p.bpp is None and p.tokens is None for k in p.values if k in keys)


def rd_plot(section: Section, salt: str) -> str | None:
    """Quality versus bits per pixel (log x): every tokenizer, rate sweeps as lines."""
    label = "bytes per shape (log)" if section.task == "shape" else "bits per pixel (log)"
    return _figure(section.series, section.quality_columns(), "bpp", label, salt)


def tokens_plot(section: Section, salt: str) -> str | None:
    """Quality versus tokens per image (log x) for tokenizers that have token positions."""
    label = "tokens per shape (log)" if section.task == "shape" else "tokens per image (log)"
    return _figure(section.series, section.quality_columns(), "tokens", label, salt)
