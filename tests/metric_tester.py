"""A reusable contract tester for streaming metrics (:class:`vtbench.metrics.base.Metric`).

Given a factory that builds fresh instances of one metric and a fixed set of samples (originals,
reconstructions, tokens, word annotations), :class:`MetricTester` checks the contract every metric owes the
runner (``vtbench/runner.py``):

- **split batch**: feeding the samples in parts of unequal size gives the same values (and the same per-sample
  rows) as feeding them in one batch;
- **merge**: two instances fed disjoint parts, folded together with ``merge_state`` (the reduction the base
  class provides for processes / shards), equal the whole, in either order and into a fresh accumulator;
- **round trip**: state saved into ``progress.pt`` and loaded back with the runner's own
  ``Evaluation.save_progress`` / ``load_progress`` (the one evaluation core) computes the same values (after every
  batch, and when a run resumes from a part and continues);
- **nulls**: nothing seen, or a non-finite input (timings, token bits, extracted features), gives
  ``value: None`` with a reason, never 0 and never NaN/Infinity in the JSON (``allow_nan=False``, as
  ``results.write_json_atomic`` writes).

Every computed value is also checked for shape: one value per declared output, finite or ``None`` with a reason.
The samples are split the same way in every check, so the metric sees bit-identical inputs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Sequence

import torch

from vtbench.core import quantise_uint8
from vtbench.evaluation import PROGRESS_FILE, Evaluation
from vtbench.metrics.base import Batch, Metric, MetricValue

#: sizes of the parts the samples are fed in (sum = number of samples); unequal on purpose
DEFAULT_PARTS = (2, 1, 3)
#: synthetic encode / decode seconds per image, so throughput metrics have timings to stream
SECONDS_PER_IMAGE = 0.01
#: the non-finite inputs a metric can receive: (target, value)
POISONS = tuple((target, value) for target in ("timings", "bits", "features") for value in (math.nan, math.inf))


def slice_tokens(tokens: Any, sl: slice, n: int) -> Any:
    """The images ``sl`` of a ``Tokens`` value: every per-image field (tensor or list of length ``n``) sliced."""
    if tokens is None:
        return None
    changes = {}
    for f in dataclasses.fields(tokens):
        v = getattr(tokens, f.name)
        if isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == n:
            changes[f.name] = v[sl]
        elif isinstance(v, list) and len(v) == n:
            changes[f.name] = v[sl]
    return dataclasses.replace(tokens, **changes)


@dataclass
class Samples:
    """What a metric is fed: uint8 ``(N, 3, H, W)`` originals and reconstructions, the ``Tokens`` of all N images
    (or None), per-image word annotations (or None), and the tokenizer that decodes perturbed tokens (pFID)."""

    ids: list[str]
    original: torch.Tensor
    reconstruction: torch.Tensor
    tokens: Any = None
    annotations: list | None = None
    tokenizer: Any = None

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, sl: slice, poison: tuple[str, float] | None = None) -> Batch:
        """The batch of images ``sl``; ``poison=("timings"|"bits", value)`` puts ``value`` into that input."""
        n = len(self)
        size = len(range(*sl.indices(n)))
        tokens = slice_tokens(self.tokens, sl, n)
        seconds = SECONDS_PER_IMAGE * size
        if poison and poison[0] == "timings":
            seconds = poison[1]
        if poison and poison[0] == "bits" and tokens is not None:
            bits = tokens.bits.clone()
            bits[0] = poison[1]
            tokens = dataclasses.replace(tokens, bits=bits)
        return Batch(ids=self.ids[sl], original=self.original[sl], reconstruction=self.reconstruction[sl],
                     tokens=tokens, encode_seconds=seconds, decode_seconds=seconds,
                     annotations=None if self.annotations is None else self.annotations[sl])


def parts_of(n: int, sizes: Sequence[int]) -> list[slice]:
    if sum(sizes) != n or min(sizes) < 1:
        raise ValueError(f"part sizes {tuple(sizes)} do not cover {n} samples")
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return [slice(s, s + k) for s, k in zip(starts, sizes)]


class _PoisonedExtractor:
    """Wraps a feature extractor so the first image's features are ``value`` (NaN / inf)."""

    def __init__(self, inner: Any, value: float):
        self._inner, self._value = inner, value

    def features(self, images: torch.Tensor) -> torch.Tensor:
        f = self._inner.features(images).clone()
        f[0] = self._value
        return f

    def features_all(self, images: torch.Tensor, logits: bool = False) -> Any:
        out = self._inner.features_all(images, logits=logits)
        poisoned = {k: (v.clone() if v is not None else None) for k, v in vars(out).items()}
        for v in poisoned.values():
            if v is not None:
                v[0] = self._value
        return SimpleNamespace(**poisoned)

    def __getattr__(self, item: str) -> Any:
        return getattr(self._inner, item)


# -- comparisons ------------------------------------------------------------------------------------------------
def _close(a: Any, b: Any, rel: float, abs_: float, where: str) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            _close(a[k], b[k], rel, abs_, f"{where}.{k}")
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        assert len(a) == len(b), f"{where}: lengths {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, rel, abs_, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, (int, float)) and not isinstance(b, bool) or \
            isinstance(b, float) and isinstance(a, int) and not isinstance(a, bool):
        assert math.isclose(a, b, rel_tol=rel, abs_tol=abs_) or (math.isnan(a) and math.isnan(b)), \
            f"{where}: {a!r} != {b!r} (rel {rel}, abs {abs_})"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_values_equal(got: dict[str, MetricValue], want: dict[str, MetricValue], *, rel: float, abs_: float,
                        volatile: frozenset[str] = frozenset(), what: str = "") -> None:
    """Same keys; per key the same value (to ``rel``/``abs_``), ``n``, reason, metadata and ``extra``;
    ``volatile`` keys are compared for shape only (their value depends on when they are measured)."""
    assert got.keys() == want.keys(), f"{what}: outputs {sorted(got)} != {sorted(want)}"
    for k in got:
        g, w = got[k].to_dict(), want[k].to_dict()
        if k in volatile:
            g, w = {**g, "value": None, "extra": {}}, {**w, "value": None, "extra": {}}
        _close(g, w, rel, abs_, f"{what} {k}")


def assert_well_formed(values: dict[str, MetricValue], keys: Sequence[str], what: str = "") -> None:
    """One value per declared output; each finite or None with a reason; the JSON writable without NaN."""
    assert sorted(values) == sorted(keys), f"{what}: outputs {sorted(values)} != declared {sorted(keys)}"
    for k, v in values.items():
        assert isinstance(v, MetricValue), f"{what} {k}: {type(v)}"
        if v.value is None:
            assert isinstance(v.reason, str) and v.reason.strip(), f"{what} {k}: null without a reason"
        else:
            assert isinstance(v.value, float) and math.isfinite(v.value), f"{what} {k}: value {v.value!r}"
        json.dumps(v.to_dict(), allow_nan=False)  # raises on NaN / Infinity anywhere, extra included


def assert_rows_equal(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], rel: float, abs_: float,
                      what: str = "") -> None:
    assert got.keys() == want.keys(), f"{what}: per-sample keys {sorted(got)} != {sorted(want)}"
    for k in got:
        torch.testing.assert_close(got[k].double().cpu(), want[k].double().cpu(), rtol=rel, atol=abs_,
                                   equal_nan=True, msg=lambda m: f"{what} per-sample {k}: {m}")


# -- the tester -------------------------------------------------------------------------------------------------
class MetricTester:
    """Runs the contract on one metric.

    Args:
        make: builds a fresh instance (as the runner would: same constructor arguments every call).
        samples: the data every check feeds.
        workdir: where the progress files of the round-trip checks are written.
        parts: sizes of the parts for the split / merge / resume checks.
        rel, abs_: tolerance between different batchings (float64 sums: summation order only).
        volatile: output keys whose values depend on when they are measured (compared for shape only).
    """

    def __init__(self, make: Callable[[], Metric], samples: Samples, workdir: Path,
                 parts: Sequence[int] = DEFAULT_PARTS, rel: float = 1e-9, abs_: float = 1e-12,
                 volatile: frozenset[str] = frozenset()):
        self.make, self.samples, self.workdir = make, samples, Path(workdir)
        self.parts = parts_of(len(samples), parts)
        self.rel, self.abs_, self.volatile = rel, abs_, volatile
        self._saves = 0
        self._decoded: dict[bytes, torch.Tensor] = {}

    # feeding, as the evaluation core does
    def feed(self, metric: Metric, sl: slice, poison: tuple[str, float] | None = None) -> dict[str, torch.Tensor]:
        batch = self.samples.batch(sl, poison)
        if metric.needs_extra_decode:  # pFID: the runner decodes the metric's own tokens into batch.perturbed
            perturbed = metric.extra_decode(batch.tokens, self.samples.tokenizer, batch.ids)
            batch.perturbed = {metric.key: torch.cat([self._decode_one(slice_tokens(perturbed, slice(i, i + 1),
                                                                                    batch.size))
                                                      for i in range(batch.size)])}
        return metric.update(batch) or {}

    def _decode_one(self, tokens: Any) -> torch.Tensor:
        """uint8 decode of one image's tokens; one image at a time, so the pixels do not depend on the batching
        (float32 kernels differ by batch size at rounding level), and memoised by its codes (decoding dominates
        the cost of the pFID contract)."""
        key = tokens.codes.cpu().numpy().tobytes()
        if key not in self._decoded:
            with torch.inference_mode():
                self._decoded[key] = quantise_uint8(self.samples.tokenizer.decode(tokens).float())
        return self._decoded[key]

    def feed_parts(self, metric: Metric, parts: Sequence[slice]) -> dict[str, torch.Tensor]:
        rows: list[dict[str, torch.Tensor]] = [self.feed(metric, sl) for sl in parts]
        return {k: torch.cat([r[k] for r in rows]) for k in rows[0]} if rows else {}

    def round_trip(self, source: Metric) -> Metric:
        """A fresh instance holding ``source``'s state, through the runner's progress file (torch.save, then
        torch.load with weights_only=True)."""
        self._saves += 1
        folder = self.workdir / f"progress-{self._saves}"
        saving = Evaluation(source=SimpleNamespace(timings={}), metrics={"m": source}, fingerprint="metric-tester",
                            dir=folder, done={"x"})
        saving.save_progress()
        assert (folder / PROGRESS_FILE).is_file()
        fresh = self.make()
        loading = Evaluation(source=SimpleNamespace(timings={}), metrics={"m": fresh}, fingerprint="metric-tester",
                             dir=folder)
        loading.load_progress()
        assert loading.done == {"x"}, "the progress file was not loaded (unreadable or refused)"
        return fresh

    def keys(self, metric: Metric) -> list[str]:
        return [o.key for o in metric.outputs]

    # the checks
    def check_empty(self) -> None:
        """Nothing fed: every output is None with a reason (never 0)."""
        m = self.make()
        values = m.compute()
        assert_well_formed(values, self.keys(m), "empty")
        assert all(v.value is None for v in values.values()), \
            f"values without any data: { {k: v.value for k, v in values.items() if v.value is not None} }"

    def check_streaming(self) -> None:
        """Split batch, merge (both orders, and into a fresh accumulator), round trip and resume."""
        n = len(self.samples)
        tol = dict(rel=self.rel, abs_=self.abs_, volatile=self.volatile)
        whole = self.make()
        rows_whole = self.feed(whole, slice(0, n))
        v_whole = whole.compute()
        assert_well_formed(v_whole, self.keys(whole), "whole batch")

        split = self.make()
        first, rest = self.parts[0], self.parts[1:]
        rows = [self.feed(split, first)]
        after_first = self.round_trip(split)  # the state a resumed run would start from
        rows += [self.feed(split, sl) for sl in rest]
        rows_split = {k: torch.cat([r[k] for r in rows]) for k in rows[0]}
        v_split = split.compute()
        assert_well_formed(v_split, self.keys(split), "split batch")
        assert_values_equal(v_split, v_whole, what="split batch vs whole", **tol)
        assert_rows_equal(rows_split, rows_whole, self.rel, self.abs_, "split batch vs whole")
        assert_values_equal(split.compute(), v_split, rel=0, abs_=0, what="compute twice")

        other = self.make()
        self.feed_parts(other, rest)
        merged = self.round_trip(after_first)
        merged.merge_state(other.state_tensors())
        assert_values_equal(merged.compute(), v_whole, what="merge (first part <- rest) vs whole", **tol)
        reverse = self.make()
        self.feed_parts(reverse, rest)
        reverse.merge_state(after_first.state_tensors())
        assert_values_equal(reverse.compute(), v_whole, what="merge (rest <- first part) vs whole", **tol)
        accumulator = self.make()  # a rank that saw nothing, collecting everyone's state
        accumulator.merge_state(after_first.state_tensors())
        accumulator.merge_state(other.state_tensors())
        assert_values_equal(accumulator.compute(), v_whole, what="merge into a fresh instance vs whole", **tol)

        resumed = self.round_trip(after_first)
        self.feed_parts(resumed, rest)
        assert_values_equal(resumed.compute(), v_split, what="resumed vs uninterrupted", rel=self.rel,
                            abs_=self.abs_)
        finished = self.round_trip(split)  # interrupted after the last batch: nothing left to feed
        assert_values_equal(finished.compute(), v_split, what="round trip of the final state", rel=0, abs_=0)

    def check_non_finite(self) -> list[str]:
        """Each non-finite input that applies to this metric: every output is None with a reason, or the value
        it has on clean inputs (an output that does not read that input). Returns the poisons applied."""
        n = len(self.samples)
        clean = self.make()
        self.feed(clean, slice(0, n))
        v_clean = clean.compute()
        applied = []
        for target, value in POISONS:
            if target == "bits" and self.samples.tokens is None:
                continue
            m = self.make()
            if target == "features":
                if getattr(m, "extractor", None) is None:
                    continue
                m.extractor = _PoisonedExtractor(m.extractor, value)
            what = f"non-finite {target} ({value})"
            applied.append(f"{target}={value}")
            self.feed(m, slice(0, n), poison=(target, value) if target != "features" else None)
            with warnings.catch_warnings():  # inf - inf in the statistics: the metric must say null, not warn
                warnings.simplefilter("ignore", RuntimeWarning)
                got = m.compute()
            assert_well_formed(got, self.keys(m), what)
            for k, v in got.items():
                if v.value is not None and k not in self.volatile:
                    assert v.value == v_clean[k].value or (v_clean[k].value is not None and math.isclose(
                        v.value, v_clean[k].value, rel_tol=self.rel, abs_tol=self.abs_)), \
                        f"{what}: {k} = {v.value!r} (clean: {v_clean[k].value!r}); expected null with a reason"
        return applied

    def run(self) -> list[str]:
        self.check_empty()
        self.check_streaming()
        return self.check_non_finite()


__all__ = ["DEFAULT_PARTS", "MetricTester", "POISONS", "Samples", "assert_values_equal", "assert_well_formed",
           "parts_of", "slice_tokens"]
