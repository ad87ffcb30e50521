"""The reference shape codecs on a shape set under protocol ``shape@1.0``: one row per codec.

Shows the calls a runner makes (open_shapes -> reference_sample once per shape -> encode/decode -> score_shape ->
ShapeMetricAccumulator) and prints a markdown table: mean Chamfer-L1, Chamfer-L2, F-score@0.01/0.02, normal
consistency, volume IoU (with the number of shapes that have one), mean bytes and tokens per shape and the
compression ratio against the reference encoding (binary PLY, float32 vertices, int32 faces). The ``identity`` row
scores each shape against itself: the protocol's sampling noise floor. Usage::

    python benchmarks/bench_shape_codecs.py [--data embedded] [--points 100000] [--codecs draco-q11 octree-d6 ...]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vtbench.config import load_protocol  # noqa: E402
from vtbench.three_d.codecs import DEFAULT_CODECS, get_codec  # noqa: E402
from vtbench.three_d.data import Shape, open_shapes  # noqa: E402
from vtbench.three_d.metrics import (  # noqa: E402
    ShapeMetricAccumulator,
    ShapeSettings,
    iou_query_points,
    metric_keys,
    reference_sample,
    score_shape,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="embedded")
    ap.add_argument("--points", type=int, default=None, help="surface points (default: the protocol's)")
    ap.add_argument("--iou-points", type=int, default=None)
    ap.add_argument("--codecs", nargs="*", default=list(DEFAULT_CODECS))
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    protocol = load_protocol("shape")
    settings = ShapeSettings.from_protocol(protocol.settings, seed=args.seed)
    if args.points or args.iou_points:
        settings = ShapeSettings(points=args.points or settings.points, taus=settings.taus,
                                 iou_points=args.iou_points or settings.iou_points, iou_box=settings.iou_box,
                                 seed=args.seed)
    ds = open_shapes(args.data, protocol.get("normalisation.policy"), limit=args.limit, seed=args.seed)
    query = iou_query_points(settings)
    shapes = [s for s in ds if isinstance(s, Shape)]
    t0 = time.perf_counter()
    refs = {s.id: reference_sample(s, settings, query) for s in shapes}
    print(f"{ds!r}; skipped: {ds.skip_summary()['by_reason']}; references {time.perf_counter() - t0:.1f} s; "
          f"{settings}", file=sys.stderr)

    keys = metric_keys(settings)
    rows = []
    for name in ["identity", *args.codecs]:
        acc = ShapeMetricAccumulator(keys=tuple(keys))
        bits, tokens, ref_bits = [], [], []
        t0 = time.perf_counter()
        for s in shapes:
            if name == "identity":
                rec, b, tok = s.mesh if s.mesh is not None else s.points, 8 * s.reference_bytes, None
            else:
                codec = get_codec(name)
                enc = codec.encode(s)
                rec, b, tok = codec.decode(enc), enc.bits, enc.tokens
            acc.update(score_shape(refs[s.id], rec, settings, query))
            bits.append(b)
            ref_bits.append(8 * s.reference_bytes)
            if tok is not None:
                tokens.append(tok)
        out = acc.compute()
        rows.append((name, out, sum(bits) / len(bits) / 8, (sum(tokens) / len(tokens)) if tokens else None,
                     sum(ref_bits) / sum(bits), time.perf_counter() - t0))
        print(f"{name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)

    def fmt(v, digits=4):
        return "-" if v is None else f"{v:.{digits}f}"

    head = ["codec", "Chamfer-L1", "Chamfer-L2", *(f"F@{t:g}" for t in settings.taus), "NC", "IoU (n)",
            "bytes/shape", "tokens/shape", "ratio"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name, out, nbytes, ntok, ratio, _ in rows:
        iou = out["iou"]
        cells = [name, fmt(out["chamfer_l1"]["value"], 5), fmt(out["chamfer_l2"]["value"], 6),
                 *(fmt(out[f"fscore@{t:g}"]["value"], 3) for t in settings.taus),
                 fmt(out["normal_consistency"]["value"], 3), f"{fmt(iou['value'], 3)} ({iou['n']})",
                 f"{nbytes:,.0f}", "-" if ntok is None else f"{ntok:,.0f}",
                 "1" if name == "identity" else f"{ratio:.1f}x" if ratio < 10 else f"{ratio:,.0f}x"]
        print("| " + " | ".join(cells) + " |")
    assert all(math.isfinite(r[2]) for r in rows)


if __name__ == "__main__":
    main()
