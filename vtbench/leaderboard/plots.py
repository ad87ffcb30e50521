"""Plots for the leaderboard as inline SVG strings (matplotlib, Agg-free SVG canvas, no pyplot state).

Two figures per section: quality versus bits per pixel (rate-distortion, log x; one line per rate sweep, a
marker per single tokenizer) and quality versus tokens per image (token-based tokenizers only).

Labels come from result records, so the SVG is made safe to inline: text is drawn as glyph paths
(``svg.fonttype = 'path'``: no fonts needed in the browser, and no record string survives as SVG text), the
comments matplotlib writes with each string are removed, mathtext is off (a ``$`` in a name is just a
character), and every id is prefixed per plot so several inline SVGs in one page never share an id.
"""

from __future__ import annotations

import io
import re

from vtbench.leaderboard.view import Column, Section, Series

# Learned tokenizers get strong colours; references (identity, resize, codecs) muted greys and dashed lines.
_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#bcbd22")
_REF_COLOURS = ("#555555", "#888888", "#aaaaaa", "#333333", "#777777")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">")
_MAX_LABEL = 40


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


def _figure(series: list[Series], cols: list[Column], x: str, xlabel: str, salt: str) -> str | None:
    """One row of subplots (one per quality column) sharing a legend; None when there is nothing to draw."""
    import matplotlib
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    def xy(s: Series, key: str) -> tuple[list[float], list[float]]:
        pts = [(getattr(p, x), p.values[key]) for p in s.points if getattr(p, x) is not None and key in p.values]
        return [a for a, _ in pts], [b for _, b in pts]

    cols = [c for c in cols if any(xy(s, c.key)[0] for s in series)]
    drawn = [s for s in series if any(xy(s, c.key)[0] for c in cols)]
    if not cols or not drawn:
        return None
    with matplotlib.rc_context(_rc(salt)):
        fig = Figure(figsize=(3.4 * len(cols) + 0.4, 3.4), layout="constrained")
        axes = fig.subplots(1, len(cols), squeeze=False)[0]
        handles: dict[str, object] = {}
        n_learned = n_ref = 0
        for i, s in enumerate(drawn):
            if s.reference:
                style = dict(color=_REF_COLOURS[n_ref % len(_REF_COLOURS)], linestyle="--", alpha=0.9)
                n_ref += 1
            else:
                style = dict(color=_COLOURS[n_learned % len(_COLOURS)], linestyle="-")
                n_learned += 1
            for ax, col in zip(axes, cols):
                xs, ys = xy(s, col.key)
                if xs:
                    (h,) = ax.plot(xs, ys, marker=_MARKERS[i % len(_MARKERS)], markersize=5, linewidth=1.4,
                                   label=_label(s.label), **style)
                    handles.setdefault(_label(s.label) + f"\x00{i}", h)
        for ax, col in zip(axes, cols):
            ax.set_xscale("log")
            xs = [v for s in drawn for v in xy(s, col.key)[0]]
            if xs and min(xs) == max(xs):  # one rate (e.g. every tokenizer at 1024 tokens): centre it
                ax.set_xlim(min(xs) / 2, min(xs) * 2)
            # plain tick labels ("0.2", "1", "10"; the default log labels are mathtext, which is off here),
            # at 1-2-5 steps unless the axis spans many decades, so a narrow range still gets labels
            lo, hi = ax.get_xlim()
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if hi / lo <= 1e3 else (1.0,)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel(xlabel)
            ax.set_ylabel(_axis_label(col))
            ax.set_title(col.header)
        labels = [k.split("\x00")[0] for k in handles]
        fig.legend(list(handles.values()), labels, loc="outside lower center", ncol=min(5, len(labels)))
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    return safe_inline_svg(buf.getvalue(), salt)


def rd_plot(section: Section, salt: str) -> str | None:
    """Quality versus bits per pixel (log x): every tokenizer, rate sweeps as lines."""
    label = "bytes per shape (log)" if section.task == "shape" else "bits per pixel (log)"
    return _figure(section.series, section.quality_columns(), "bpp", label, salt)


def tokens_plot(section: Section, salt: str) -> str | None:
    """Quality versus tokens per image (log x) for tokenizers that have token positions."""
    label = "tokens per shape (log)" if section.task == "shape" else "tokens per image (log)"
    return _figure(section.series, section.quality_columns(), "tokens", label, salt)
