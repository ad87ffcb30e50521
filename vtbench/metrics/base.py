"""The metric contract.

A metric is a ``torchmetrics.Metric``: it folds batches into declared states (``add_state`` with a reduction) and
turns them into values at the end. States are plain tensors, so a run can checkpoint them (resume), and
torchmetrics reduces them across processes (sum / cat / max) under ``torchrun``. A metric that cannot run yields
``value: None`` with a reason, never 0.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Mapping

import torch
import torchmetrics

from vtbench.registry import Registry


class MetricUnavailable(RuntimeError):
    """Raised by a metric's constructor when it cannot run here (missing weights, missing engine)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Output:
    """One value a metric produces."""

    key: str
    display_name: str
    unit: str = ""
    higher_is_better: bool | None = None  # None: neither (e.g. a rate)


@dataclass
class MetricValue:
    value: float | None
    n: int
    higher_is_better: bool | None
    unit: str = ""
    display_name: str = ""
    reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Batch:
    """One batch as every metric sees it.

    ``original`` and ``reconstruction`` are uint8 ``(N, 3, H, W)`` on the same device and of the same size:
    reconstructions are quantised to 8 bits before any metric, as the rFID protocol does. The generation task has
    no originals: ``original`` is None and ``reconstruction`` holds the generated samples.
    """

    ids: list[str]
    original: torch.Tensor | None
    reconstruction: torch.Tensor
    tokens: Any = None  # vtbench.tokenizers.base.Tokens (None for reference-only passes)
    encode_seconds: float = 0.0
    decode_seconds: float = 0.0
    annotations: list | None = None  # per sample: ground-truth words ([{"text", "box"}]) or None (text task)
    # uint8 reconstructions decoded from perturbed tokens, keyed by the pFID metric's key (pfid@a0.5_d100_b1)
    perturbed: dict[str, torch.Tensor] | None = None
    # int64 (N,) positions of the items in the source's order (generated samples: the Inception Score splits
    # samples in order, whatever process scored them); None when order does not matter
    index: torch.Tensor | None = None

    def __post_init__(self) -> None:
        for name in ("original", "reconstruction"):
            t = getattr(self, name)
            if t is None and name == "original":
                continue
            if t.dtype != torch.uint8 or t.ndim != 4 or t.shape[1] != 3:
                raise ValueError(f"Batch.{name} must be uint8 (N,3,H,W), got {t.dtype} {tuple(t.shape)}")
        if self.original is not None and self.original.shape != self.reconstruction.shape:
            raise ValueError(f"original {tuple(self.original.shape)} and reconstruction "
                             f"{tuple(self.reconstruction.shape)} differ in shape")
        if len(self.ids) != self.reconstruction.shape[0]:
            raise ValueError(f"{len(self.ids)} ids for {self.reconstruction.shape[0]} images")

    @property
    def size(self) -> int:
        return int(self.reconstruction.shape[0])

    @staticmethod
    def to_float(x: torch.Tensor) -> torch.Tensor:
        """uint8 -> float32 in [0, 1]."""
        return x.float().div_(255.0)


@dataclass(frozen=True)
class MetricContext:
    """Everything the runner hands a metric at construction, as one explicit object (``Metric.from_context``).

    ``device``: where states and models live; ``reference_key``: keys caches of reference-side work (Inception
    statistics, OCR of originals) by dataset revision, selection, preprocessing and annotations; ``resolution``:
    the policy's tokenizer input size; ``tokenizer``: the tokenizer under test (pFID decodes perturbed tokens);
    ``settings``: the protocol's table named like the metric (``[detail]``, ``[pfid]``, ...); ``variant``: the
    text after ``@`` in a selected name (``pfid@a0.25_d100_b1``)."""

    device: Any = "cpu"
    reference_key: str | None = None
    resolution: int | None = None
    tokenizer: Any = None
    settings: Mapping[str, Any] = field(default_factory=dict)
    variant: str | None = None


_REDUCE = ("sum", "cat", "max")
# torchmetrics warns when compute() runs before any update(); a vtbench metric answers that case itself (null with
# the reason "no images"), and a run resumed from its progress file computes from restored states
warnings.filterwarnings("ignore", message=r"The ``compute`` method of metric .* was called before the ``update``",
                        category=UserWarning)


def finite_or_none(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, +-inf) inside dicts, lists and tuples replaced by None: result
    JSON is written with ``allow_nan=False``, and a NaN in ``extra`` must not stop a run from being recorded."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(finite_or_none(v) for v in obj)
    return obj


class Metric(torchmetrics.Metric):
    """Base class: a ``torchmetrics.Metric`` whose states are declared with ``add_state(name, default, reduce)``
    (``reduce``: ``sum``, ``cat`` or ``max``, torchmetrics' ``dist_reduce_fx``), so under ``torchrun`` every state
    is gathered and reduced across processes by torchmetrics' own ``sync`` before ``compute`` (NCCL or gloo).

    Subclasses set ``name`` and ``outputs``, declare states in ``__init__``, and implement ``update`` (returning
    per-sample values keyed by output key, each a tensor of shape ``(N,)``, for the per-sample table) and ``compute``
    (``{key: MetricValue}``). Two things differ from a plain torchmetrics metric, both for the runner:

    - ``update`` returns its per-sample values (torchmetrics' wrapper discards an update's return value; the
      ``_wrap_update`` override below passes it through and otherwise keeps torchmetrics' bookkeeping);
    - states travel through the resume file as plain tensors (``state_tensors`` / ``load_state_tensors``: a
      ``cat`` state is one concatenated tensor) and ``merge_state`` keeps arrival order for ``cat`` states (this
      process's rows first: the Inception Score splits samples in order) and accepts lazily shaped ``sum`` states
      (an empty default that takes its shape from the first batch, e.g. the code histogram).
    """

    name: ClassVar[str] = ""
    outputs: ClassVar[tuple[Output, ...]] = ()
    # True for metrics that score a second decode of the same batch (pFID: perturbed tokens); the runner then
    # calls ``extra_decode`` and passes the decoded, quantised images in ``Batch.perturbed[self.key]``
    needs_extra_decode: ClassVar[bool] = False
    accepts_variant: ClassVar[bool] = False  # configured instances by name (pfid@a0.25_d100_b1)
    needs: ClassVar[frozenset[str]] = frozenset({"pixels"})
    protocol: ClassVar[str] = "reconstruction"
    full_state_update: ClassVar[bool] = False

    def __init__(self) -> None:
        # no cached compute: the runner computes once, and tests compute after further updates
        super().__init__(compute_with_cache=False)

    def _wrap_update(self, update: Any) -> Any:
        """torchmetrics' update wrapper, returning what ``update`` returned (the per-sample values)."""
        last: dict[str, Any] = {}

        def capture(*args: Any, **kwargs: Any) -> None:
            last["rows"] = update(*args, **kwargs)

        wrapped = super()._wrap_update(capture)

        def run(*args: Any, **kwargs: Any) -> Any:
            wrapped(*args, **kwargs)
            return last.pop("rows", None)

        return run

    # -- state ------------------------------------------------------------------------------------
    def add_state(self, name: str, default: torch.Tensor | None, reduce: str) -> None:  # type: ignore[override]
        """``reduce='sum'|'max'`` takes a tensor default; ``'cat'`` keeps a list of tensors (default None)."""
        if reduce not in _REDUCE:
            raise ValueError(f"reduce must be one of {_REDUCE}")
        super().add_state(name, default=[] if reduce == "cat" else default.clone(), dist_reduce_fx=reduce)
        self.__dict__.setdefault("_vt_reduce", {})[name] = reduce

    def _state_kinds(self) -> dict[str, str]:
        return self.__dict__.get("_vt_reduce", {})

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Every state as one CPU tensor (``cat`` states concatenated): what the resume file keeps."""
        out = {}
        for name, reduce in self._state_kinds().items():
            v = getattr(self, name)
            if reduce == "cat":
                parts = [v] if isinstance(v, torch.Tensor) else list(v)  # a tensor after a cross-process sync
                v = torch.cat([t.cpu() for t in parts]) if parts else torch.empty(0)
            out[name] = v.detach().cpu().clone()
        return out

    def load_state_tensors(self, state: dict[str, torch.Tensor]) -> None:
        """Restore states from ``state_tensors`` output (a resume file)."""
        for name, reduce in self._state_kinds().items():
            v = state[name]
            if reduce == "cat":
                setattr(self, name, [v.to(self.device)] if v.numel() else [])
            else:
                setattr(self, name, v.to(device=self.device, dtype=self._defaults[name].dtype).clone())

    def merge_state(self, other: Any) -> None:  # type: ignore[override]
        """Fold another process's (or shard's) states into this one: a ``state_tensors`` dict or a metric of the
        same class."""
        if isinstance(other, Metric):
            other = other.state_tensors()
        for name, reduce in self._state_kinds().items():
            v = other[name]
            mine = getattr(self, name)
            if reduce == "cat":
                if v.numel():
                    mine.append(v.to(self.device))
            elif mine.numel() == 0:  # lazily shaped state not yet created here
                setattr(self, name, v.to(self.device).clone())
            elif reduce == "sum":
                setattr(self, name, mine + v.to(mine.device))
            else:
                setattr(self, name, torch.maximum(mine, v.to(mine.device)))

    # -- contract ---------------------------------------------------------------------------------
    @classmethod
    def from_context(cls, ctx: MetricContext) -> "Metric":
        """Build the metric for a run. The default takes nothing from ``ctx``; metrics that need the device,
        caches, settings or the tokenizer override this and read the fields they use, by name."""
        return cls()

    def extra_decode(self, tokens: Any, tokenizer: Any, ids: list[str]) -> Any:
        """Tokens to decode a second time for this metric (``needs_extra_decode``); the runner decodes them with
        the same inverse preprocessing and 8-bit quantisation as the reconstruction."""
        raise NotImplementedError(f"{type(self).__name__} declares no extra decode")

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def compute(self) -> dict[str, MetricValue]:
        raise NotImplementedError

    def value(self, key: str, value: float | None, n: int, reason: str | None = None, **extra: Any) -> MetricValue:
        """A ``MetricValue`` for output ``key`` carrying that output's display metadata."""
        out = next(o for o in self.outputs if o.key == key)
        if value is not None and not math.isfinite(value):  # NaN / inf: never reported as a number
            value, reason = None, reason or (f"the value is {float(value)} (an input, e.g. a timing, the bits or a "
                                             "feature, was not finite)")
        return MetricValue(value=None if value is None else float(value), n=n,
                           higher_is_better=out.higher_is_better, unit=out.unit,
                           display_name=out.display_name, reason=reason, extra=finite_or_none(extra))

    @classmethod
    def instance_id(cls, name: str, **config: Any) -> str:
        """What makes two selected instances the same metric (``name``; pFID: its resolved settings)."""
        return name

    @classmethod
    def check_variant(cls, variant: str) -> None:
        """Raise ``ValueError`` when ``variant`` (the text after ``@`` in ``pfid@a0.5_d100_b1``) is malformed."""

    @classmethod
    def unavailable(cls, reason: str, n: int = 0, **config: Any) -> dict[str, MetricValue]:
        """Null values with ``reason`` for every output of this metric (``config``: the constructor's
        ``settings`` / ``variant``, for metrics whose output keys depend on them)."""
        return {o.key: MetricValue(None, n, o.higher_is_better, o.unit, o.display_name, reason) for o in cls.outputs}


METRICS: Registry[type[Metric]] = Registry("metric")


def metric_for_output(key: str) -> str:
    """The registered metric name that produces output ``key`` (``bpp`` -> ``compression``)."""
    if key in METRICS:
        return key
    for name in METRICS.names():
        if any(o.key == key for o in METRICS.get(name).outputs):
            return name
    METRICS.get(key)  # raises with did-you-mean
    raise AssertionError
