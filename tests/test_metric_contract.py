"""The metric contract, run over every registered metric (``vtbench.metrics.METRICS``): split batch equals
whole batch, merged states equal the whole, state survives the runner's ``progress.pt`` round trip, and nothing
seen / non-finite inputs give null with a reason (see ``tests/metric_tester.py``).

A new metric is covered by registering it. A metric that cannot be constructed here fails unless it is listed
in ``EXEMPT`` with the reason; its null-with-reason path is still checked. Stand-ins that keep the default suite
fast and offline are listed in ``STAND_INS`` with the slow test that runs the real component.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import structured_images
from metric_tester import MetricTester, Samples, assert_well_formed
from PIL import Image

from vtbench.config import load_protocol
from vtbench.core import quantise_uint8
from vtbench.metrics import METRICS
from vtbench.runner import build_metrics, metric_config
from vtbench.tokenizers import build_tokenizer

#: metrics that cannot run their streaming contract here at all: name -> why (the null path is still checked)
EXEMPT: dict[str, str] = {
    "shape": "scores meshes (ShapeBatch), not image batches; run end to end through the core in "
             "tests/test_shape_task.py (values equal a direct computation; resume) and order/process invariant by "
             "construction (fsum over sorted per-shape values)",
    "shape_compression": "scores meshes (ShapeBatch), not image batches; checked in tests/test_shape_task.py",
}

#: components replaced in the default (fast, offline) tests: name -> what, why, and the test that runs the real one
STAND_INS: dict[str, str] = {
    "rfid": "Inception costs ~0.9 s per image on 2 CPU cores (the contract feeds ~60) and every 2048x2048 float64 "
            "state op ~30 ms: a fixed random projection of 8x8-pooled pixels to 64 features stands in (the state "
            "is sized by fid.FEATURE_DIM); test_contract_real_inception (slow) runs Inception at 2048",
    "pfid": "as rfid (pFID is rfid on reconstructions decoded from perturbed tokens)",
    "lpips": "torchvision's ImageNet AlexNet checkpoint is not available offline: the contract runs LPIPS on a "
             "randomly initialised AlexNet (values meaningless, streaming checked); without it the metric is "
             "null with a reason (test_lpips_without_backbone_is_null_with_reason)",
    "text": "EasyOCR reads ~0.03 s per crop and the contract recognises hundreds: a stub engine reads a crop as its "
            "ground-truth word when its pixels are the original's, else as its mean grey; "
            "test_contract_real_ocr (slow) runs EasyOCR",
    "ocr": "EasyOCR reads a 256x256 page in ~2.5 s: a stub engine reads one word per 32x32 tile (its mean grey); "
           "test_contract_real_ocr (slow) runs EasyOCR",
    "generation": "as rfid: the projection stands in for pool_3 (64), its first 16 dims for the spatial features "
                  "and a fixed 10-class head for the logits; the reference is the originals through the same "
                  "stand-in; tests/test_gfid.py runs the real extractor",
}

#: outputs compared for shape only: metric -> {output: why its value depends on when it is measured}
VOLATILE: dict[str, dict[str, str]] = {
    "speed": {"peak_memory_mb": "the process's peak resident memory at each update; it grows between runs"},
}

TOKENIZER = "tiny.vq"  # bundled weights, real VQ codes, 64x64 in ~0.1 s
TEXT_IMAGES = ("sans_large_01", "sans_bold_large_01", "sans_medium_01")


# -- samples ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(TOKENIZER, device=torch.device("cpu"))


def _photo_samples(tok, n: int = 6, size: int = 32) -> Samples:
    original = torch.from_numpy(np.stack(structured_images(n, size))).permute(0, 3, 1, 2).contiguous()
    with torch.inference_mode():
        tokens = tok.encode(original.float() / 255)
        rec = quantise_uint8(tok.decode(tokens).float())
    return Samples([f"img_{i}" for i in range(n)], original, rec, tokens=tokens, tokenizer=tok)


@pytest.fixture(scope="module")
def photos(tokenizer) -> Samples:
    return _photo_samples(tokenizer)


def _text_samples(names=TEXT_IMAGES) -> Samples:
    from vtbench.data.datasets import embedded_root
    root = embedded_root()
    words = {}
    for line in (root / "text_words.jsonl").read_text().splitlines():
        rec = json.loads(line)
        words[Path(rec["image"]).stem] = rec["words"]
    original = torch.stack([torch.from_numpy(np.array(Image.open(root / "text" / f"{n}.png").convert("RGB")))
                            .permute(2, 0, 1) for n in names])
    rec = original.clone()
    rec[..., 128:, :] = rec[..., 128:, :] // 64 * 64 + 32  # the lower half coarsely quantised, the upper exact
    return Samples(list(names), original, rec, annotations=[words[n] for n in names])


@pytest.fixture(scope="module")
def texts() -> Samples:
    return _text_samples()


# -- stand-ins --------------------------------------------------------------------------------------------------
class ProjectionExtractor:
    """Features of uint8 (N, 3, H, W): 8x8 average-pooled pixels through a fixed random projection to ``DIM``,
    tanh; float64, each image on its own."""

    id = "metric-tester-projection"
    DIM = 64

    def __init__(self):
        self.proj = torch.randn(3 * 8 * 8, self.DIM, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(images.double() / 255, 8).flatten(1)
        return torch.tanh(x @ self.proj * 0.5)

    def describe(self) -> dict[str, str]:
        return {"extractor": self.id}


class GenerationExtractor(ProjectionExtractor):
    """The projection stand-in with ``features_all`` (pool, spatial, logits) as the generation metric reads it."""

    device = torch.device("cpu")
    sha256 = "metric-tester"
    resize_mode = "clean"
    has_logits = True
    SPATIAL = 16

    def features_all(self, images: torch.Tensor, logits: bool = False) -> SimpleNamespace:
        pool = self.features(images)
        head = torch.randn(self.DIM, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        return SimpleNamespace(pool=pool, spatial=pool[:, :self.SPATIAL].clone(),
                               logits=pool @ head if logits else None)

    def logits_unavailable_reason(self) -> None:
        return None


def _generation_reference(samples: Samples):
    from vtbench.gfid.reference import Reference
    from vtbench.metrics.frechet import FeatureStats, GaussianStats
    out = GenerationExtractor().features_all(samples.original)
    stats = {}
    for side, f in (("pool", out.pool), ("spatial", out.spatial)):
        acc = FeatureStats.zeros(f.shape[1])
        acc.update(f)
        mu, sigma = acc.mean_cov()
        stats[side] = GaussianStats(mu, sigma, f.shape[0])
    return Reference(id="originals", description={}, pool=stats["pool"], spatial=stats["spatial"],
                     features=out.pool.float(), extractor=GenerationExtractor.id)


class StubOCR:
    """A deterministic OCR engine (see STAND_INS): ``recognize`` knows the originals' word crops."""

    def __init__(self, samples: Samples, margins=(0.0, 0.15)):
        from vtbench.metrics.text import crop
        self.table = {}
        for img, words in zip(samples.original, samples.annotations):
            for w in words:
                for m in margins:
                    self.table[self._key(crop(img, w["box"], m))] = w["text"]

    @staticmethod
    def _key(arr: np.ndarray) -> str:
        return hashlib.sha1(np.ascontiguousarray(arr).tobytes() + str(arr.shape).encode()).hexdigest()

    def recognize(self, crops):
        return [self.table.get(self._key(c), f"{float(np.mean(c)):.0f}") for c in crops]

    def read(self, image):
        h, w = image.shape[:2]
        return [SimpleNamespace(text=f"{int(image[y:y + 32, x:x + 32].mean()) // 8:x}")
                for y in range(0, h, 32) for x in range(0, w, 32)]

    def provenance(self):
        return {"engine": "metric-tester-stub"}


def _lpips_stand_in(tmp_path: Path, monkeypatch) -> None:
    """A randomly initialised AlexNet checkpoint in torchvision's layout, found through $VTBENCH_LPIPS_BACKBONE."""
    import torchvision

    from vtbench.metrics.lpips import BACKBONE_ENV, NETS
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in torchvision.models.alexnet(weights=None).features.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    state = {f"features.{k}": torch.randn(s, generator=g) * (0.05 if k.endswith("weight") else 0.01)
             for k, s in shapes.items()}
    path = tmp_path / NETS["alex"].backbone_file
    torch.save(state, path)
    monkeypatch.setenv(BACKBONE_ENV, str(path))


def _apply_stand_ins(name: str, samples: Samples, tmp_path: Path, monkeypatch) -> None:
    if name in ("rfid", "pfid"):
        monkeypatch.setattr("vtbench.metrics.fid.load_inception", lambda path=None, device="cpu": ProjectionExtractor())
        monkeypatch.setattr("vtbench.metrics.fid.FEATURE_DIM", ProjectionExtractor.DIM)
    elif name == "lpips":
        _lpips_stand_in(tmp_path, monkeypatch)
    elif name == "generation":
        # import the gFID package before the patch: its modules bind FEATURE_DIM at import, and a 64 bound then
        # would outlive this test (the probe's reference then expects 64-d features)
        import vtbench.gfid.reference  # noqa: F401
        import vtbench.gfid.scoring  # noqa: F401
        monkeypatch.setattr("vtbench.metrics.inception.FEATURE_DIM", ProjectionExtractor.DIM)
        monkeypatch.setattr("vtbench.metrics.inception.SPATIAL_DIM", GenerationExtractor.SPATIAL)
    elif name in ("text", "ocr"):
        stub = StubOCR(samples)
        monkeypatch.setattr("vtbench.metrics.text._engine", lambda engine, device: stub)


# -- construction, as the runner does it ------------------------------------------------------------------------
def _protocol(name: str):
    return load_protocol(METRICS.get(name).protocol)


def _samples_for(name: str, photos: Samples, texts: Samples) -> Samples:
    return texts if METRICS.get(name).protocol == "text" else photos


def _factory(name: str, samples: Samples, tokenizer):
    protocol = _protocol(name)
    resolution = 256 if protocol.task == "text" else None
    if name == "generation":  # built as vtbench gfid builds it: the reference and extractor in the context
        from vtbench.metrics.base import MetricContext
        ref = _generation_reference(samples)
        return lambda: METRICS.get(name).from_context(MetricContext(settings={"reference": ref,
                                                                             "extractor": GenerationExtractor()}))

    def make():
        built, unavailable = build_metrics([name], torch.device("cpu"), reference_key=None, protocol=protocol,
                                           resolution=resolution, tokenizer=tokenizer)
        if name in unavailable:
            raise LookupError(unavailable[name])
        return built[name]
    return make


def _check_null_path(name: str, reason: str, n: int, tokenizer=None) -> None:
    config = metric_config(name, _protocol(name))
    values = METRICS.get(name).unavailable(reason, n, **config)
    assert values, f"{name}: unavailable() returned no outputs"
    assert_well_formed(values, list(values), f"{name} unavailable")
    assert all(v.value is None and v.reason == reason and v.n == n for v in values.values())


def _run_contract(name: str, samples: Samples, tokenizer, tmp_path: Path, parts=None, non_finite=True) -> list[str]:
    make = _factory(name, samples, tokenizer)
    try:
        make()
    except LookupError as exc:
        _check_null_path(name, str(exc), len(samples))
        if name in EXEMPT:
            pytest.skip(f"{name} exempt: {EXEMPT[name]} (null with a reason checked)")
        pytest.fail(f"{name} cannot be constructed here and is not listed in EXEMPT: {exc}")
    kw = {"parts": parts} if parts else {}
    if len(samples) == 3 and not parts:
        kw["parts"] = (1, 1, 1)
    tester = MetricTester(make, samples, tmp_path, volatile=frozenset(VOLATILE.get(name, {})), **kw)
    tester.check_empty()
    tester.check_streaming()
    return tester.check_non_finite() if non_finite else []


# -- the tests --------------------------------------------------------------------------------------------------
def test_lists_name_registered_metrics_only():
    for table in (EXEMPT, STAND_INS, VOLATILE):
        assert set(table) <= set(METRICS.names()), f"stale entries: {set(table) - set(METRICS.names())}"


@pytest.mark.parametrize("name", METRICS.names())
def test_contract(name, photos, texts, tokenizer, tmp_path, monkeypatch):
    samples = _samples_for(name, photos, texts)
    _apply_stand_ins(name, samples, tmp_path, monkeypatch)
    applied = _run_contract(name, samples, tokenizer, tmp_path)
    assert "timings=nan" in applied and "timings=inf" in applied  # every metric gets the batch timings


@pytest.mark.parametrize("name", [n for n in METRICS.names()
                                  if "tokens" in METRICS.get(n).needs or METRICS.get(n).needs_extra_decode])
def test_contract_with_codec_tokens(name, tmp_path, monkeypatch):
    """Token metrics with a codec's tokens (no codes, no positions): nulls with reasons that survive merge and
    resume, or unavailable with a reason (pFID is undefined for a codec)."""
    tok = build_tokenizer("jpeg.q50", device=torch.device("cpu"))
    samples = _photo_samples(tok)
    _apply_stand_ins(name, samples, tmp_path, monkeypatch)
    try:
        _factory(name, samples, tok)()
    except LookupError as exc:
        _check_null_path(name, str(exc), len(samples))
        return
    _run_contract(name, samples, tok, tmp_path)


@pytest.mark.parametrize("name", METRICS.names())
def test_unavailable_values_are_null_with_reason(name):
    _check_null_path(name, "weights missing (test)", 6)


def test_lpips_without_backbone_is_null_with_reason(tmp_path, monkeypatch):
    from vtbench.metrics.lpips import BACKBONE_ENV
    monkeypatch.delenv(BACKBONE_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # no torchvision cache
    monkeypatch.delenv("VTBENCH_WEIGHTS", raising=False)
    built, unavailable = build_metrics(["lpips"], torch.device("cpu"), reference_key=None)
    assert not built and "alexnet-owt-7be5be79.pth" in unavailable["lpips"]
    _check_null_path("lpips", unavailable["lpips"], 6)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["rfid", "pfid"])
def test_contract_real_inception(name, tokenizer, extractor, tmp_path):
    samples = _photo_samples(tokenizer, n=4)
    _run_contract(name, samples, tokenizer, tmp_path, parts=(1, 1, 2), non_finite=False)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["text", "ocr"])
def test_contract_real_ocr(name, tokenizer, tmp_path):
    pytest.importorskip("easyocr")
    _run_contract(name, _text_samples(TEXT_IMAGES[:2]), tokenizer, tmp_path, parts=(1, 1), non_finite=False)


# -- the bugs the contract found, pinned one by one ------------------------------------------------------------
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_value_never_reports_a_non_finite_number(bad):
    """``Metric.value`` turned NaN into null but passed inf on (``allow_nan=False`` JSON then failed); non-finite
    floats in ``extra`` are nulled too."""
    from vtbench.metrics.pixel import SSIM
    v = SSIM().value("ssim", bad, 3, seconds=bad, nested={"a": [1.0, bad]})
    assert v.value is None and "not finite" in v.reason and v.extra == {"seconds": None, "nested": {"a": [1.0, None]}}
    json.dumps(v.to_dict(), allow_nan=False)
    assert SSIM().value("ssim", bad, 3, reason="given").reason == "given"


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_speed_with_a_non_finite_time_is_null_not_zero(bad):
    from vtbench.metrics.base import Batch
    from vtbench.metrics.speed import Speed
    x = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    m = Speed()
    m.update(Batch(["a", "b"], x, x, encode_seconds=bad, decode_seconds=0.5))
    v = m.compute()
    assert v["encode_images_per_s"].value is None and "not finite" in v["encode_images_per_s"].reason
    assert v["decode_images_per_s"].value == 4.0
    json.dumps({k: x.to_dict() for k, x in v.items()}, allow_nan=False)
