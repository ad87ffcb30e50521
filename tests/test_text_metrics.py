"""Text-preservation metrics: edit distances against jiwer, bucket assignment by hand, and the metrics' logic with a
deterministic stand-in OCR engine (the real engines are exercised in tests/test_ocr.py and the embedded-card test)."""

from __future__ import annotations

import hashlib

import jiwer
import numpy as np
import pytest
import torch

import vtbench.metrics.text as text_mod
from vtbench.metrics.base import Batch
from vtbench.metrics.text import (
    OCRErrorRate,
    TextAccuracy,
    _edit_distance_py,
    bucket_of,
    edit_distance,
    normalised_edit_similarity,
    relative_size,
)

M = text_mod.TEXT_DEFAULTS["crop_margin"]


def test_edit_distance_and_error_rates_agree_with_jiwer():
    refs = ["the quick brown fox", "Hello World", "a b c d", "vtbench 2025 text"]
    hyps = ["the quick brwn fox jumps", "hello World", "a c d", "vtbench 2O25 text"]
    for r, h in zip(refs, hyps):
        assert edit_distance(r, h) == _edit_distance_py(r, h)
        assert edit_distance(r.split(), h.split()) == _edit_distance_py(r.split(), h.split())
    cer = sum(edit_distance(r, h) for r, h in zip(refs, hyps)) / sum(len(r) for r in refs)
    wer = sum(edit_distance(r.split(), h.split()) for r, h in zip(refs, hyps)) / sum(len(r.split()) for r in refs)
    assert cer == pytest.approx(jiwer.cer(refs, hyps), abs=1e-12)
    assert wer == pytest.approx(jiwer.wer(refs, hyps), abs=1e-12)


def test_crop_margin_grows_the_box_by_its_shorter_side():
    img = torch.arange(3 * 50 * 100, dtype=torch.int64).reshape(3, 50, 100).remainder(256).to(torch.uint8)
    assert text_mod.crop(img, [10, 10, 50, 20]).shape == (10, 40, 3)
    assert text_mod.crop(img, [10, 10, 50, 20], 0.15).shape == (14, 44, 3)  # 1.5 px each side, rounded outwards
    assert text_mod.crop(img, [0, 0, 100, 50], 0.5).shape == (50, 100, 3)  # clipped


def test_ned_and_buckets_by_hand():
    assert normalised_edit_similarity("Hello", "Hello") == 1.0
    assert normalised_edit_similarity("Hel1o", "Hello") == pytest.approx(0.8)
    assert normalised_edit_similarity("", "abcd") == 0.0 and normalised_edit_similarity("", "") == 1.0
    edges = [0.02, 0.03, 0.04, 1.0]
    # a 10x40 box in a 256x400 image: thickness 10 over the longer side 400 = 0.025 -> bucket 1
    assert relative_size([5, 5, 45, 15], 256, 400) == pytest.approx(0.025)
    assert bucket_of(0.025, edges) == 0 and bucket_of(0.03, edges) == 1 and bucket_of(0.0399, edges) == 1
    assert bucket_of(0.04, edges) == 2 and bucket_of(0.5, edges) == 2
    assert bucket_of(0.0199, edges) is None and bucket_of(1.0, edges) is None


class FakeEngine:
    """Reads a crop back only if its pixels are exactly those of a registered word crop (else "")."""

    def __init__(self):
        self.table: dict[str, str] = {}
        self.calls = 0

    def key(self, arr):
        return hashlib.sha1(np.ascontiguousarray(arr).tobytes() + str(arr.shape).encode()).hexdigest()

    def register(self, arr, text):
        self.table[self.key(arr)] = text

    def recognize(self, crops):
        self.calls += len(crops)
        return [self.table.get(self.key(c), "") for c in crops]

    def read(self, image):
        from types import SimpleNamespace
        return [SimpleNamespace(text=self.table.get(self.key(image), ""))]

    def provenance(self):
        return {"engine": "fake"}


def _scene(seed=0):
    """One 100x100 image with 3 words of thickness 2, 3 and 10 px (relative sizes 0.02, 0.03, 0.10) and one
    too-small word (1 px)."""
    g = torch.Generator().manual_seed(seed)
    img = torch.randint(0, 256, (3, 100, 100), generator=g, dtype=torch.uint8)
    words = [{"text": "ab", "box": [0, 0, 20, 2]}, {"text": "Cd", "box": [0, 10, 30, 13]},
             {"text": "EFG", "box": [0, 20, 40, 30]}, {"text": "tiny", "box": [0, 40, 20, 41]}]
    return img, words


@pytest.fixture
def fake(monkeypatch):
    eng = FakeEngine()
    monkeypatch.setattr(text_mod, "_engine", lambda name, device: eng)
    return eng


def test_text_accuracy_identity_perturbation_buckets_and_headline(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("VTBENCH_CACHE", str(tmp_path))
    img, words = _scene()
    for w in words:
        fake.register(text_mod.crop(img, w["box"], M), w["text"])
    m = TextAccuracy(settings={"edges": {"256": [0.02, 0.03, 0.04, 1.0]}}, resolution=256, reference_key="k")
    per = m.update(Batch(ids=["a"], original=img[None], reconstruction=img[None], annotations=[words]))
    v = m.compute()
    assert v["text_acc"].value == 1.0 and v["text_ned"].value == 1.0 and per["text_acc"].tolist() == [1.0]
    ex = v["text_acc"].extra
    assert [b["n"] for b in ex["buckets"]] == [1, 1, 1] and ex["n_too_small"] == 1 and ex["n_words"] == 4

    # the reconstruction loses the 3-px word only: bucket means (1, 0, 1) -> headline 2/3
    rec = img.clone()
    rec[:, 10:13, :30] = 0
    m = TextAccuracy(settings={"edges": {"256": [0.02, 0.03, 0.04, 1.0]}}, resolution=256, reference_key="k")
    m.update(Batch(ids=["a"], original=img[None], reconstruction=rec[None], annotations=[words]))
    v = m.compute()
    assert v["text_acc"].value == pytest.approx(2 / 3)
    assert [b["text_acc"] for b in v["text_acc"].extra["buckets"]] == [1.0, 0.0, 1.0]
    assert v["text_ned"].value == pytest.approx(2 / 3)  # "" vs "Cd": NED 0


def test_headline_is_unweighted_mean_of_bucket_means(fake):
    img, words = _scene()
    words = [dict(w) for w in words[:3]] + [{"text": "HIJ", "box": [50, 20, 90, 30]}]  # bucket 2 holds two words
    for w in words:
        fake.register(text_mod.crop(img, w["box"], M), w["text"])
    rec = img.clone()
    rec[:, 20:30, 50:90] = 0  # lose one of the two big words
    m = TextAccuracy(resolution=256)
    m.update(Batch(ids=["a"], original=img[None], reconstruction=rec[None], annotations=[words]))
    v = m.compute()
    # buckets: [1/1, 1/1, 1/2] -> (1 + 1 + 0.5) / 3, while the word mean would be 3/4
    assert v["text_acc"].value == pytest.approx(2.5 / 3)


def test_words_unreadable_on_the_original_are_excluded_and_counted(fake):
    img, words = _scene()
    fake.register(text_mod.crop(img, words[0]["box"], M), "ab")  # only the first word is readable at all
    m = TextAccuracy(resolution=256)
    m.update(Batch(ids=["a"], original=img[None], reconstruction=img[None], annotations=[words]))
    v = m.compute()
    assert v["text_acc"].value == 1.0 and v["text_acc"].extra["n_unreadable_original"] == 2
    m = TextAccuracy(settings={"filter_original": False}, resolution=256)
    m.update(Batch(ids=["a"], original=img[None], reconstruction=img[None], annotations=[words]))
    assert m.compute()["text_acc"].value == pytest.approx(1 / 3)


def test_no_words_is_null_with_reason_and_states_merge(fake):
    img, words = _scene()
    m = TextAccuracy(resolution=256)
    m.update(Batch(ids=["a"], original=img[None], reconstruction=img[None], annotations=None))
    v = m.compute()
    assert v["text_acc"].value is None and "no ground-truth word" in v["text_acc"].reason
    for w in words:
        fake.register(text_mod.crop(img, w["box"], M), w["text"])
    a, b, both = TextAccuracy(resolution=256), TextAccuracy(resolution=256), TextAccuracy(resolution=256)
    img2, _ = _scene(seed=1)
    a.update(Batch(ids=["a"], original=img[None], reconstruction=img[None], annotations=[words]))
    b.update(Batch(ids=["b"], original=img2[None], reconstruction=img2[None], annotations=[words]))
    both.update(Batch(ids=["a", "b"], original=torch.stack([img, img2]), reconstruction=torch.stack([img, img2]),
                      annotations=[words, words]))
    a.merge_state(b.state_tensors())
    assert a.compute()["text_acc"].value == both.compute()["text_acc"].value


def test_unknown_resolution_is_unavailable(fake):
    from vtbench.metrics.base import MetricUnavailable
    with pytest.raises(MetricUnavailable, match="bucket edges"):
        TextAccuracy(resolution=384)


def test_ocr_error_rate_against_jiwer(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("VTBENCH_CACHE", str(tmp_path))
    g = torch.Generator().manual_seed(0)
    imgs = [torch.randint(0, 256, (3, 16, 16), generator=g, dtype=torch.uint8) for _ in range(4)]
    recs = [torch.randint(0, 256, (3, 16, 16), generator=g, dtype=torch.uint8) for _ in range(4)]
    refs = ["the quick brown fox", "Hello World", "", "vtbench 2025 text"]
    hyps = ["the quick brwn fox jumps", "hello World", "ignored", "vtbench 2O25 text"]
    for im, r in zip(imgs, refs):
        fake.register(im.permute(1, 2, 0).numpy(), r)
    for im, h in zip(recs, hyps):
        fake.register(im.permute(1, 2, 0).numpy(), h)
    m = OCRErrorRate(reference_key="r")
    per = m.update(Batch(ids=list("abcd"), original=torch.stack(imgs), reconstruction=torch.stack(recs)))
    v = m.compute()
    kept = [i for i, r in enumerate(refs) if r]
    assert v["cer"].value == pytest.approx(jiwer.cer([refs[i] for i in kept], [hyps[i] for i in kept]), abs=1e-12)
    assert v["wer"].value == pytest.approx(jiwer.wer([refs[i] for i in kept], [hyps[i] for i in kept]), abs=1e-12)
    assert v["cer"].extra["n_empty_reference"] == 1 and np.isnan(per["cer"][2].item())
    # the originals' OCR is cached per reference key: a second run does not read them again
    calls = []
    fake.read = (lambda orig: (lambda image: calls.append(1) or orig(image)))(fake.read)
    m2 = OCRErrorRate(reference_key="r")
    m2.update(Batch(ids=list("abcd"), original=torch.stack(imgs), reconstruction=torch.stack(recs)))
    assert m2.compute()["cer"].value == v["cer"].value and len(calls) == 3  # reconstructions only (one is skipped)
