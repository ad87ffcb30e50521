"""The bad-input corpus (tests/data/bad_inputs, README.md there lists every case and its outcome).

Each case is held to the same contract: a clear message naming the file and the fix; a non-zero exit where the
whole command cannot go on; nothing already computed lost. Images, checkpoints, result records and word manifests
come from the committed corpus; cases that cannot be committed small (wrong shapes, NaN weights, odd file names, a
disk that fills up, a killed process) are generated here.
"""

from __future__ import annotations

import errno
import json
import math
import os
import signal
import subprocess
import sys
import time
import tracemalloc
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from vtbench import cards as cards_mod
from vtbench import evaluation, results
from vtbench.cli import app
from vtbench.data.annotations import AnnotationError, load_word_manifest, match_annotations
from vtbench.data.images import ImageLoadError, ImageTooLargeError, load_image
from vtbench.evaluation import NoUsableDataError, OutputNotWritableError, OutputWriteError, RunLockedError
from vtbench.results import RecordError, parse_record, read_record
from vtbench.runner import NonFiniteOutputError, PartialRunError, RunConfig, run
from vtbench.tokenizers.weights import (
    UntrustedCheckpointError,
    WeightsMismatchError,
    load_checkpoint,
    load_official_checkpoint,
)

ROOT = Path(__file__).resolve().parents[1]
CORPUS = Path(__file__).resolve().parent / "data" / "bad_inputs"
IMAGES, CHECKPOINTS, RECORDS, MANIFESTS = (CORPUS / d for d in ("images", "checkpoints", "records", "manifests"))
TINY_WEIGHTS = ROOT / "tokenizers" / "weights" / "tiny_vq.safetensors"
runner = CliRunner()


@pytest.fixture(autouse=True)
def _no_extra_cards(monkeypatch):
    monkeypatch.delenv(cards_mod.ENV_VAR, raising=False)
    cards_mod.use_cards(None)
    yield
    cards_mod.use_cards(None)


def _folder(root: Path, n: int = 4, size: int = 16) -> Path:
    """``n`` small RGB PNGs with structure (sides a multiple of 8, so tiny.vq takes them natively)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(n * 1000 + size)
    for i in range(n):
        img = (np.linspace(0, 255, size)[None, :, None] * np.ones((size, 1, 3)) * (0.3 + 0.1 * i)).astype(np.uint8)
        img = np.clip(img + rng.integers(0, 40, img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / f"img_{i}.png")
    return root


def _cfg(data: Path, out: Path, **kw) -> RunConfig:
    kw.setdefault("metrics", ["psnr"])
    kw.setdefault("progress", False)
    kw.setdefault("preprocess", "native")
    kw.setdefault("workers", 0)
    kw.setdefault("thumbnails", 0)
    return RunConfig(data=str(data), out=out, **kw)


def _values(rec: dict) -> dict:
    return {k: v["value"] for k, v in rec["metrics"].items()}


def _tmp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith((".tmp", ".bak")) or p.name.startswith(".vtbench-write")]


# ============================================================================================ images (loader)

def _expect_error(name: str, *fragments: str, kind: type = ImageLoadError) -> None:
    with pytest.raises(kind) as info:
        load_image(IMAGES / name)
    msg = str(info.value)
    assert name in msg and "Fix:" in msg, msg
    for f in fragments:
        assert f in msg, msg


def test_zero_byte_image():
    _expect_error("zero_byte.png", "empty (0 bytes)")


def test_truncated_image():
    _expect_error("truncated.png", "truncated")


def test_wrong_extension_is_decoded_by_content():
    """A JPEG named .png is the JPEG it is (Pillow reads the content, never the name)."""
    got = load_image(IMAGES / "jpeg_named.png")
    with Image.open(IMAGES / "jpeg_named.png") as im:
        assert im.format == "JPEG"
        assert np.array_equal(got, np.asarray(im.convert("RGB")))


def test_html_page_and_lfs_pointer_named_png():
    _expect_error("html_named.png", "not an image")
    _expect_error("lfs_pointer.png", "Git LFS pointer", "git lfs pull")


def test_16bit_grayscale_keeps_the_high_byte():
    got = load_image(IMAGES / "gray16.png")
    assert got.shape == (16, 16, 3) and got.dtype == np.uint8
    assert np.array_equal(got[..., 0].ravel(), np.arange(256))  # 257*i >> 8 == i: scaled, never clipped at 255
    assert (got[..., 0] == got[..., 1]).all() and (got[..., 1] == got[..., 2]).all()


def test_cmyk_uses_pillows_conversion():
    with Image.open(IMAGES / "cmyk.jpg") as im:
        assert im.mode == "CMYK"
        want = np.asarray(im.convert("RGB"))
    assert np.array_equal(load_image(IMAGES / "cmyk.jpg"), want)


def test_palette_with_transparency_is_composited_on_white():
    with Image.open(IMAGES / "palette_transparent.png") as im:
        index = np.asarray(im)
    got = load_image(IMAGES / "palette_transparent.png")
    assert (index == 0).any() and (got[index == 0] == 255).all()  # transparent entry 0 -> white


def test_grayscale_becomes_three_equal_channels():
    got = load_image(IMAGES / "gray.png")
    with Image.open(IMAGES / "gray.png") as im:
        assert np.array_equal(got[..., 0], np.asarray(im))
    assert (got[..., 0] == got[..., 2]).all()


def test_one_pixel_image_loads():
    assert load_image(IMAGES / "one_pixel.png").shape == (1, 1, 3)


@pytest.mark.parametrize("name, budget", [("bomb_pixels.png", 2 << 20), ("bomb_text_chunk.png", 16 << 20)])
def test_decompression_bombs_are_refused_without_allocating(name, budget):
    """A 100000 x 100000 header over 855 bytes, and a zTXt chunk inflating to 4 MB: refused (ImageTooLargeError,
    the fix named) while Python allocates far less than the image or the text would need."""
    tracemalloc.start()
    try:
        _expect_error(name, "decompression", kind=ImageTooLargeError)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < budget, f"{name}: {peak} bytes allocated"


@pytest.mark.parametrize("name", ["animated.png", "animated.gif"])
def test_animated_images_give_their_first_frame(name):
    got = load_image(IMAGES / name)
    assert got.shape == (16, 16, 3) and (got == 10).all()  # frames are 10, 200, 90


def test_exif_orientation_is_not_applied():
    """Policy: raw pixel order, as ADM's loader and torchvision's ImageFolder read ImageNet (published numbers
    depend on it). The file is stored top-half black with orientation 6 (a viewer shows it rotated)."""
    with Image.open(IMAGES / "exif_rotated.jpg") as im:
        assert im.getexif().get(0x0112) == 6
    got = load_image(IMAGES / "exif_rotated.jpg").astype(int)
    assert got[:6].mean() < 30 and got[-6:].mean() > 225  # top rows dark, bottom rows bright: not rotated


ODD_NAMES = ["space name.png", "ünïcödé 图像.png", "-leading-dash.png", "semi;colon&amp.png", "new\nline.png",
             "%s%n{0}.png", "#hash?.png", "quote'\"name.png", "x..y..png", "x" * 200 + ".png"]


@pytest.fixture(scope="module")
def odd_folder(tmp_path_factory) -> Path:
    root = _folder(tmp_path_factory.mktemp("odd"), n=1)
    src = root / "img_0.png"
    for name in ODD_NAMES:
        (root / name).write_bytes(src.read_bytes())
    return root


def test_odd_file_names_load_and_write_safely(odd_folder, tmp_path):
    """Names with spaces, unicode, newlines, shell and format characters, '..' and 200 characters: each is read,
    keeps its id in the per-sample table, and every file written for it (thumbnail, reconstruction) stays inside
    its folder under a safe name."""
    out, recon = tmp_path / "out", tmp_path / "recon"
    (rec,) = run(["identity.none"], _cfg(odd_folder, out, thumbnails=20, save_reconstructions=recon))
    assert rec["dataset"]["n_used"] == len(ODD_NAMES) + 1 and not rec["dataset"]["skipped"]
    samples = pd.read_csv(next(out.rglob("samples.csv")))
    assert set(samples["id"]) == set(ODD_NAMES) | {"img_0.png"}
    written = [p for p in recon.rglob("*") if p.is_file()] + [p for p in out.rglob("*.png")]
    assert len(written) == 3 * (len(ODD_NAMES) + 1)  # reconstructions + original and reconstruction thumbnails
    for p in written:
        assert "\n" not in str(p) and ".." not in p.relative_to(tmp_path).parts
        assert p.resolve().is_relative_to(tmp_path.resolve())


# ============================================================================================ images (in a run)

@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory) -> Path:
    """Every corpus image next to two good ones."""
    root = _folder(tmp_path_factory.mktemp("mixed"), n=2)
    for f in IMAGES.iterdir():
        (root / f.name).write_bytes(f.read_bytes())
    return root


def test_a_run_skips_and_records_each_bad_image(mixed_folder, tmp_path):
    """Unreadable files and a 1x1 image tiny.vq cannot take natively are skipped, each with its file and fix in
    the record; the rest are measured (animated.gif is no dataset image: folders list PNG/JPEG/BMP/WebP/TIFF)."""
    (rec,) = run(["tiny.vq"], _cfg(mixed_folder, tmp_path))
    skipped = {s["id"]: s["reason"] for s in rec["dataset"]["skipped"]}
    unreadable = {"zero_byte.png", "truncated.png", "html_named.png", "lfs_pointer.png", "bomb_pixels.png",
                  "bomb_text_chunk.png"}
    assert set(skipped) == unreadable | {"one_pixel.png"}
    for name in unreadable:
        assert name in skipped[name] and "Fix:" in skipped[name]
    assert "divisible by 8" in skipped["one_pixel.png"] and "--resolution" in skipped["one_pixel.png"]
    listed = [f for f in os.listdir(mixed_folder) if not f.endswith(".gif")]
    assert rec["dataset"]["n_used"] == len(listed) - len(skipped) and rec["metrics"]["psnr"]["value"] > 0


def test_a_dataset_with_no_readable_image_fails(tmp_path):
    data = tmp_path / "broken"
    data.mkdir()
    for name in ("zero_byte.png", "truncated.png", "html_named.png"):
        (data / name).write_bytes((IMAGES / name).read_bytes())
    with pytest.raises(NoUsableDataError, match="not one of the 3 items could be used") as info:
        run(["identity.none"], _cfg(data, tmp_path / "out"))
    assert "zero_byte.png" in str(info.value) and "Fix:" in str(info.value)
    assert not list((tmp_path / "out").rglob("result.json"))  # no record with n = 0
    r = runner.invoke(app, ["run", "-t", "identity.none", "-d", str(data), "--metrics", "psnr", "--preprocess",
                            "native", "-o", str(tmp_path / "out2"), "--workers", "0", "-q"])
    assert r.exit_code == 1 and "could be used" in r.output


# ============================================================================================ checkpoints

@pytest.mark.parametrize("name, fragment", [
    ("zero_byte.pt", "empty (0 bytes)"), ("random_bytes.pt", "not a PyTorch checkpoint"),
    ("random_bytes.safetensors", "not a readable safetensors file"), ("html_page.pt", "an HTML page"),
    ("lfs_pointer.safetensors", "Git LFS pointer")])
def test_damaged_checkpoints_are_named_and_never_sent_to_trust(name, fragment):
    """Empty, random-byte, HTML and LFS-pointer files: a WeightsMismatchError naming the file and saying to
    re-download; never the advice to --trust-checkpoint (no unpickling could read them)."""
    for load in (lambda p: load_official_checkpoint(p, inert=True), lambda p: load_checkpoint(p)):
        with pytest.raises(WeightsMismatchError) as info:
            load(CHECKPOINTS / name)
        msg = str(info.value)
        assert name in msg and fragment in msg and "--trust-checkpoint runs" not in msg, msg


def _tiny_state() -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    return load_file(str(TINY_WEIGHTS))


def test_truncated_and_corrupt_zip_checkpoints(tmp_path):
    good = tmp_path / "good.pt"
    torch.save(_tiny_state(), good)
    data = good.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    src = zipfile.ZipFile(good)
    with zipfile.ZipFile(tmp_path / "bad_pickle.pt", "w") as z:  # a torn data.pkl inside an intact archive
        for n in src.namelist():
            z.writestr(n, os.urandom(len(src.read(n))) if n.endswith("data.pkl") else src.read(n))
    for name in ("truncated.pt", "bad_pickle.pt"):
        with pytest.raises(WeightsMismatchError) as info:
            load_official_checkpoint(tmp_path / name, inert=True)
        msg = str(info.value)
        assert name in msg and "re-download" in msg and "--trust-checkpoint runs" not in msg, msg


def test_a_hostile_pickle_is_still_refused_as_untrusted(tmp_path):
    """The corrupt-file message does not swallow the security refusal: a well-formed legacy file that pickles a
    callable still gets the trust message (tests/test_checkpoint_security.py has the whole corpus)."""
    import pickle
    magic = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)
    evil = pickle.PROTO + b"\x02" + pickle.GLOBAL + b"os\nsystem\n" + pickle.BINUNICODE + (4).to_bytes(4, "little") \
        + b"true" + pickle.TUPLE1 + pickle.REDUCE + pickle.STOP
    (tmp_path / "evil.pt").write_bytes(magic + pickle.dumps(1001, protocol=2) + pickle.dumps({}, protocol=2) + evil)
    with pytest.raises(UntrustedCheckpointError, match="--trust-checkpoint"):
        load_official_checkpoint(tmp_path / "evil.pt", inert=True)


@pytest.mark.parametrize("change, fragment", [("shape", "shape mismatches"), ("missing", "missing")])
def test_wrong_shapes_and_missing_keys(tmp_path, change, fragment):
    from safetensors.torch import save_file
    state = _tiny_state()
    key = sorted(state)[0]
    if change == "shape":
        state[key] = torch.zeros(3, 3)
    else:
        del state[key]
    save_file(state, str(tmp_path / "w.safetensors"))
    r = runner.invoke(app, ["run", "-t", "tiny.vq", "--weights", str(tmp_path / "w.safetensors"), "-d",
                            str(_folder(tmp_path / "d", 2)), "-o", str(tmp_path / "out"), "--metrics", "psnr", "-q"])
    assert r.exit_code == 1 and fragment in r.output and "w.safetensors" in r.output and key in r.output


def test_empty_checkpoint_via_the_cli_is_an_error_not_aborted(tmp_path):
    r = runner.invoke(app, ["run", "-t", "tiny.vq", "--weights", str(CHECKPOINTS / "zero_byte.pt"), "-d",
                            str(_folder(tmp_path / "d", 2)), "-o", str(tmp_path / "out"), "--metrics", "psnr", "-q"])
    assert r.exit_code == 1 and "zero_byte.pt" in r.output and "empty" in r.output and "Aborted" not in r.output


def test_empty_metric_weights_give_a_null_metric_not_aborted(tmp_path, monkeypatch):
    """An empty LPIPS backbone file (torch.load raises EOFError, which click prints as 'Aborted.'): LPIPS is null
    with the reason, every other metric is computed, exit 0."""
    empty = tmp_path / "alexnet-owt-7be5be79.pth"
    empty.write_bytes(b"")
    monkeypatch.setenv("VTBENCH_LPIPS_BACKBONE", str(empty))
    r = runner.invoke(app, ["run", "-t", "identity.none", "-d", str(_folder(tmp_path / "d", 2)), "-o",
                            str(tmp_path / "out"), "--metrics", "psnr,lpips", "--preprocess", "native", "--json"])
    assert r.exit_code == 0, r.output
    rec = read_record(next((tmp_path / "out").rglob("result.json")))
    assert rec["metrics"]["lpips"]["value"] is None and "could not be read" in rec["metrics"]["lpips"]["reason"]


NAN_CARD = """family = "badtiny"
entry = "vtbench.tokenizers.tiny:TinyTokenizer"
size_multiple = 8
input_range = "[-1,1]"
[defaults.params]
channels = [32, 48, 64]
n_res = 1
[variants.nan]
kind = "vq"
params = { dim = 8, codebook_size = 1024, l2_norm = true, beta = 0.25 }
[variants.nan.weights]
file = "nan_vq.safetensors"
"""


def test_nan_weights_null_that_tokenizer_and_go_on(tmp_path, monkeypatch):
    """A checkpoint with NaN weights in a run of three tokenizers: its metrics are null with the reason (in a
    record marked failed, so the next run tries again), the others are measured, the run ends non-zero naming
    it, and no message points at a progress file that does not exist."""
    from safetensors.torch import save_file
    state = _tiny_state()
    last = [k for k in state if k.startswith("decoder.") and k.endswith("weight")][-1]
    state[last] = torch.full_like(state[last], float("nan"))
    save_file(state, str(tmp_path / "nan_vq.safetensors"))
    (tmp_path / "cards").mkdir()
    (tmp_path / "cards" / "badtiny.toml").write_text(NAN_CARD)
    monkeypatch.setenv("VTBENCH_WEIGHTS", str(tmp_path))
    cards_mod.use_cards([tmp_path / "cards"])
    data, out = _folder(tmp_path / "d", 2), tmp_path / "out"
    with pytest.raises(PartialRunError) as info:
        run(["identity.none", "badtiny.nan", "jpeg.q50"], _cfg(data, out))
    err = info.value
    assert set(err.failures) == {"badtiny.nan"} and "NaN/Inf" in err.failures["badtiny.nan"]
    assert "progress.pt" not in str(err) or (out / "progress.pt").exists()
    names = [r["tokenizer"]["name"] for r in err.records]
    assert names == ["identity.none", "badtiny.nan", "jpeg.q50"]
    bad = err.records[1]
    assert bad["metrics"]["psnr"]["value"] is None and "NaN/Inf" in bad["metrics"]["psnr"]["reason"]
    assert bad["run"]["failed"]["reason"]
    assert err.records[2]["metrics"]["psnr"]["value"] > 0
    on_disk = {r["tokenizer"]["name"]: r for _, r in results.iter_records(out)}
    assert set(on_disk) == set(names)
    # the CLI: the finished ones in the table, the failure named, exit 1
    r = runner.invoke(app, ["run", "-t", "badtiny.nan", "-t", "jpeg.q50", "-d", str(data), "-o", str(out),
                            "--metrics", "psnr", "--preprocess", "native", "--cards", str(tmp_path / "cards")])
    assert r.exit_code == 1 and "badtiny.nan" in r.output and "1 of 2 tokenizers failed" in r.output
    assert "jpeg.q50" in r.stdout


def test_a_single_tokenizer_with_nan_output_raises_and_records(tmp_path, monkeypatch):
    import vtbench.runner as runner_mod
    from vtbench.tokenizers.base import Tokenizer
    real = runner_mod.build_tokenizer

    class NaNDecoder(Tokenizer):
        def encode(self, images):
            return self.inner.encode(images)

        def decode(self, tokens):
            return self.inner.decode(tokens) * float("nan")

        def tokens_per_image(self, h, w):
            return None

    def fake(name, **kw):
        inner = real("identity.none", **kw)
        tok = NaNDecoder(inner.card)
        tok.inner = inner
        return tok

    monkeypatch.setattr(runner_mod, "build_tokenizer", fake)
    with pytest.raises(NonFiniteOutputError, match="recorded in"):
        run(["identity.none"], _cfg(_folder(tmp_path / "d", 2), tmp_path / "out"))
    rec = read_record(next((tmp_path / "out").rglob("result.json")))
    assert rec["run"]["failed"] and rec["metrics"]["psnr"]["value"] is None


# ============================================================================================ result records

RECORD_CASES = {  # file -> (what the message says, the line it names; None: the whole file)
    "not_json.json": ("not valid JSON", 1), "truncated.json": ("ends early", 22),
    "empty.json": ("empty", None), "nan_value.json": ("NaN is not a number", 33),
    "infinity_value.json": ("-Infinity is not a number", 33), "string_value.json": ("finite number or null", 33),
    "bool_value.json": ("finite number or null", 33), "negative_n.json": ("'n' must be a count", 34),
    "future_schema.json": ("newer than this vtbench", 2), "schema_not_a_number.json": ("whole number", 2),
    "array_top_level.json": ("JSON object", 1), "no_tokenizer.json": ("'tokenizer' must be an object", 8),
    "metric_not_an_object.json": ("must be an object", 32),
    "control_chars_in_name.json": ("control or bidirectional", 9),
    "bidi_override_in_name.json": ("control or bidirectional", 9), "not_utf8.json": ("not UTF-8", 9),
}


def test_the_valid_record_reads():
    assert read_record(RECORDS / "valid.json")["metrics"]["psnr"]["value"] == 25.0


@pytest.mark.parametrize("name", sorted(RECORD_CASES))
def test_malformed_records_are_rejected_with_file_and_line(name):
    fragment, line = RECORD_CASES[name]
    with pytest.raises(RecordError) as info:
        read_record(RECORDS / name)
    err, msg = info.value, str(info.value)
    assert fragment in msg and "Fix:" in msg and str(RECORDS / name) in msg, msg
    if line is not None:
        assert err.line == line and msg.startswith(f"{RECORDS / name}:{line}: "), msg


def _out_with_a_bad_record(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    bad = out / "someone-else" / "x" / "reconstruction"
    bad.mkdir(parents=True)
    (bad / "result.json").write_bytes((RECORDS / "truncated.json").read_bytes())
    return out


def test_a_malformed_record_under_out_does_not_break_a_finished_run(tmp_path):
    out = _out_with_a_bad_record(tmp_path)
    r = runner.invoke(app, ["run", "-t", "identity.none", "-d", str(_folder(tmp_path / "d", 2)), "-o", str(out),
                            "--metrics", "psnr", "--preprocess", "native"])
    assert r.exit_code == 0, r.output
    assert "skipping malformed result" in r.output and "someone-else" in r.output
    page = (out / "index.html").read_text()
    assert "identity.none" in page


def _pair(tmp_path: Path) -> tuple[Path, Path]:
    """NEW and BASELINE: the same identity.none run twice (identical numbers)."""
    data = _folder(tmp_path / "d", 2)
    for side in ("new", "base"):
        run(["identity.none"], _cfg(data, tmp_path / side, metrics=["psnr", "ssim"]))
    return tmp_path / "new", tmp_path / "base"


@pytest.mark.parametrize("case", ["truncated.json", "nan_value.json", "string_value.json", "future_schema.json"])
def test_compare_calls_a_malformed_record_incomparable_not_a_regression(tmp_path, case):
    new, base = _pair(tmp_path)
    bad = new / "other" / "t" / "reconstruction"
    bad.mkdir(parents=True)
    (bad / "result.json").write_bytes((RECORDS / case).read_bytes())
    junit = tmp_path / "junit.xml"
    r = runner.invoke(app, ["compare", str(new), str(base), "--junit", str(junit)])
    assert r.exit_code == 2, r.output
    assert "INCOMPARABLE" in r.output and case not in ("",) and "result.json" in r.output
    assert ET.parse(junit).getroot() is not None  # JUnit still written
    assert "identity.none" in r.output  # the other pair is still compared and shown


def test_compare_a_non_number_value_in_memory_is_incomparable():
    from vtbench.compare import compare_records
    rec = json.loads((RECORDS / "valid.json").read_text())
    bad = json.loads(json.dumps(rec))
    bad["metrics"]["psnr"]["value"] = "25"
    rep = compare_records([("new", bad)], [("base", rec)])
    assert rep.rows[0].status == "incomparable" and rep.exit_code == 2


# ============================================================================================ word manifests

MANIFEST_CASES = {
    "not_json.jsonl": ("not JSON", 2), "truncated.jsonl": ("ends early", 2), "nan_box.jsonl": ("NaN", 1),
    "infinity_box.jsonl": ("Infinity", 1), "negative_size.jsonl": ("empty box", 1),
    "xywh_box.jsonl": ("not [x, y, width, height]", 1), "negative_coordinates.jsonl": ("outside the image", 1),
    "bool_box.jsonl": ("four finite numbers", 1), "text_not_a_string.jsonl": ("'text' must be a string", 1),
    "control_chars_in_text.jsonl": ("control characters", 1), "bad_ratio.jsonl": ("'ratio'", 1),
    "duplicate_image.jsonl": ("appears twice", 2), "missing_words.jsonl": ("needs 'image'", 1),
    "not_utf8.jsonl": ("not UTF-8", 1),
}


@pytest.mark.parametrize("name", sorted(MANIFEST_CASES))
def test_malformed_word_manifests_are_rejected_with_file_and_line(name):
    fragment, line = MANIFEST_CASES[name]
    with pytest.raises(AnnotationError) as info:
        load_word_manifest(MANIFESTS / name)
    msg = str(info.value)
    assert msg.startswith(f"{MANIFESTS / name}:{line}"), msg
    assert fragment in msg, msg


def test_boxes_outside_their_image_are_rejected_with_file_and_line(tmp_path):
    assert load_word_manifest(MANIFESTS / "valid.jsonl")["a.png"][0]["text"] == "HELLO"
    _folder(tmp_path, 1, size=64)
    (tmp_path / "img_0.png").rename(tmp_path / "a.png")
    manifest = tmp_path / "words.jsonl"
    manifest.write_bytes((MANIFESTS / "outside_image.jsonl").read_bytes())
    size = {"a.png": (64, 64)}.get
    with pytest.raises(AnnotationError, match=r"words\.jsonl:1: .*outside its image 'a.png' \(64x64"):
        match_annotations(["a.png"], tmp_path, manifest, size_of=size)
    manifest.write_bytes((MANIFESTS / "valid.jsonl").read_bytes())
    assert match_annotations(["a.png"], tmp_path, manifest, size_of=size)["a.png"]


def test_a_text_run_checks_boxes_against_the_images(tmp_path):
    data = _folder(tmp_path / "d", 1, size=32)
    (data / "img_0.png").rename(data / "a.png")
    (data / "words.jsonl").write_bytes((MANIFESTS / "outside_image.jsonl").read_bytes())
    with pytest.raises(AnnotationError, match="words.jsonl:1"):
        run(["identity.none"], _cfg(data, tmp_path / "out", metrics=["text"], protocol="text"))


# ============================================================================================ disk and folders

def test_unwritable_out_fails_before_the_first_batch(tmp_path, monkeypatch):
    import vtbench.runner as runner_mod
    (tmp_path / "file").write_text("x")
    monkeypatch.setattr(runner_mod.TokenizerRun, "batches", lambda *a, **k: pytest.fail("a batch was read"))
    with pytest.raises(OutputNotWritableError, match="cannot be created") as info:
        run(["identity.none"], _cfg(_folder(tmp_path / "d", 2), tmp_path / "file" / "out"))
    assert "--out" in str(info.value) and "Fix:" in str(info.value)


def test_a_full_disk_is_found_by_the_write_probe(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(evaluation.os, "fsync", full)
    with pytest.raises(OutputNotWritableError, match="No space left on device"):
        run(["identity.none"], _cfg(_folder(tmp_path / "d", 2), tmp_path / "out"))
    assert not _tmp_files(tmp_path / "out")
    r = runner.invoke(app, ["run", "-t", "identity.none", "-d", str(tmp_path / "d"), "-o", str(tmp_path / "o2"),
                            "--metrics", "psnr", "--preprocess", "native", "-q"])
    assert r.exit_code == 1 and "No space left" in r.output


def test_a_full_disk_at_the_end_replaces_nothing_and_keeps_progress(tmp_path, monkeypatch):
    """samples.csv and result.json are replaced together or not at all; temporary files are removed; the
    progress file stays, and the same command then finishes with the numbers of an uninterrupted run."""
    data, out = _folder(tmp_path / "d", 4), tmp_path / "out"
    run(["identity.none"], _cfg(data, out, metrics=["psnr"]))  # an earlier, complete run in the same folder
    folder = next(out.rglob("result.json")).parent
    before = {f: (folder / f).read_bytes() for f in ("result.json", "samples.csv")}
    real = results._write_tmp

    def full(path, text):
        if path.name == "result.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, text)

    monkeypatch.setattr(results, "_write_tmp", full)
    cfg = _cfg(data, out, metrics=["psnr", "ssim"], batch_size=1)
    with pytest.raises(OutputWriteError, match="No space left") as info:
        run(["identity.none"], cfg)
    assert "unchanged" in str(info.value) and "progress" in str(info.value)
    assert {f: (folder / f).read_bytes() for f in before} == before
    assert not _tmp_files(out) and (folder / "progress.pt").is_file()
    monkeypatch.setattr(results, "_write_tmp", real)
    (resumed,) = run(["identity.none"], cfg)
    (clean,) = run(["identity.none"], _cfg(data, tmp_path / "clean", metrics=["psnr", "ssim"], batch_size=1))
    assert _values(resumed) == _values(clean) and not (folder / "progress.pt").exists()


def test_files_replaced_together_roll_back(tmp_path, monkeypatch):
    a, b = tmp_path / "a.csv", tmp_path / "b.json"
    a.write_text("old a")
    b.write_text("old b")
    real = os.replace

    def fail_second(src, dst):
        if Path(dst) == b:
            raise OSError(errno.EIO, "I/O error")
        return real(src, dst)

    monkeypatch.setattr(results.os, "replace", fail_second)
    with pytest.raises(OSError):
        results.write_texts_together({a: "new a", b: "new b"})
    assert a.read_text() == "old a" and b.read_text() == "old b" and not _tmp_files(tmp_path)


def test_a_full_disk_at_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    data, out = _folder(tmp_path / "d", 4), tmp_path / "out"
    real, calls = torch.save, []

    def save(obj, f, *a, **k):
        calls.append(f)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *a, **k)

    monkeypatch.setattr(evaluation.torch, "save", save)
    with pytest.raises(OutputWriteError, match="previous checkpoint .* is intact"):
        run(["identity.none"], _cfg(data, out, batch_size=1, checkpoint_every=1))
    state = torch.load(next(out.rglob("progress.pt")), weights_only=True)
    assert len(state["done"]) == 1 and not _tmp_files(out)


# ============================================================================================ interruption

class _Killed(BaseException):
    """Stands for SIGKILL: no handler runs (the progress file is whatever the last checkpoint wrote)."""


def test_killed_mid_run_resumes_to_identical_numbers(tmp_path, monkeypatch):
    """The fast in-process equivalent of kill -9 (the subprocess test below is marked slow): the process dies
    after two checkpoints without saving, leaving a torn temporary file; the same command resumes from the last
    checkpoint, removes the leftover and ends with exactly the numbers of an uninterrupted run."""
    import vtbench.runner as runner_mod
    data = _folder(tmp_path / "d", 6)
    cfg = _cfg(data, tmp_path / "out", metrics=["psnr", "ssim"], batch_size=1, checkpoint_every=2)
    (clean,) = run(["jpeg.q50"], _cfg(data, tmp_path / "clean", metrics=["psnr", "ssim"], batch_size=1))
    real_process, real_save = runner_mod.TokenizerRun._process, evaluation.Evaluation.save_progress
    state = {"batches": 0, "dead": False}

    def process(self, ids, imgs):
        state["batches"] += 1
        if state["batches"] == 5:
            state["dead"] = True
            dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                                  text=True).stdout.strip()
            (self.dir / f".progress.pt.{dead}.tmp").write_bytes(b"torn")  # what a kill during torch.save leaves
            raise _Killed()
        return real_process(self, ids, imgs)

    def save(self):
        if not state["dead"]:
            real_save(self)

    monkeypatch.setattr(runner_mod.TokenizerRun, "_process", process)
    monkeypatch.setattr(evaluation.Evaluation, "save_progress", save)
    with pytest.raises(_Killed):
        run(["jpeg.q50"], cfg)
    folder = next((tmp_path / "out").rglob("progress.pt")).parent
    assert len(torch.load(folder / "progress.pt", weights_only=True)["done"]) == 4
    assert not (folder / "run.lock").exists()
    monkeypatch.undo()
    (resumed,) = run(["jpeg.q50"], cfg)
    assert _values(resumed) == _values(clean)
    assert pd.read_csv(folder / "samples.csv").equals(pd.read_csv(next((tmp_path / "clean").rglob("samples.csv"))))
    assert not _tmp_files(tmp_path / "out") and not (folder / "progress.pt").exists()


def test_a_second_run_into_the_same_folder_is_refused(tmp_path):
    """While one process holds a run folder, another run into it stops at once naming the holder; the lock goes
    with its holder (flock), so a killed run never leaves a stale one."""
    data, out = _folder(tmp_path / "d", 2), tmp_path / "out"
    (rec,) = run(["identity.none"], _cfg(data, out))
    folder = next(out.rglob("result.json")).parent
    with evaluation._Lock(folder, "a test"):
        with pytest.raises(RunLockedError, match=f"pid {os.getpid()}") as info:
            run(["identity.none"], _cfg(data, out, force=True))
        assert "another --out" in str(info.value) and str(folder) in str(info.value)
    (again,) = run(["identity.none"], _cfg(data, out, force=True))
    assert _values(again) == _values(rec) and not (folder / "run.lock").exists()


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "vtbench.cli", *args]


@pytest.mark.slow
def test_kill_9_then_the_same_command_resumes_to_identical_numbers(tmp_path):
    data = _folder(tmp_path / "d", 300, size=32)  # long enough (batch 1) to be killed between checkpoints
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VTBENCH_OFFLINE": "1"}
    args = ["run", "-t", "tiny.vq", "-d", str(data), "--metrics", "psnr,ssim", "--preprocess", "native",
            "-b", "1", "--workers", "0", "-q"]
    subprocess.run(_cli(*args, "-o", str(tmp_path / "clean")), env=env, check=True, capture_output=True)
    proc = subprocess.Popen(_cli(*args, "-o", str(tmp_path / "out")), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list((tmp_path / "out").rglob("progress.pt")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list((tmp_path / "out").rglob("progress.pt")), "the run ended before a checkpoint; make it longer"
    done = subprocess.run(_cli(*args[:-1], "-o", str(tmp_path / "out")), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "items already done" in " ".join(done.stderr.split())  # resumed, not started over
    a, b = (read_record(next((tmp_path / d).rglob("result.json"))) for d in ("out", "clean"))
    assert _values(a) == _values(b)


@pytest.mark.slow
def test_two_processes_into_one_out_do_not_corrupt_each_other(tmp_path):
    data = _folder(tmp_path / "d", 200, size=32)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VTBENCH_OFFLINE": "1"}
    args = _cli("run", "-t", "tiny.vq", "-d", str(data), "--metrics", "psnr", "--preprocess", "native", "-b", "1",
                "--workers", "0", "-q", "-o", str(tmp_path / "out"))
    procs = [subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = [p.returncode for p in procs]
    assert 0 in codes, outs
    for code, (_, err) in zip(codes, outs):
        assert code == 0 or "another vtbench process" in err, err
    rec = read_record(next((tmp_path / "out").rglob("result.json")))
    clean = subprocess.run(args[:-1] + [str(tmp_path / "clean")], env=env, capture_output=True)
    assert clean.returncode == 0
    assert _values(rec) == _values(read_record(next((tmp_path / "clean").rglob("result.json"))))


# ============================================================================================ fuzzing

_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                     st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
_json = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                     max_leaves=12)
# a few seconds in the default suite; VTBENCH_FUZZ_EXAMPLES=5000 for a deeper search
FUZZ = settings(max_examples=int(os.environ.get("VTBENCH_FUZZ_EXAMPLES", "60")), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(image=st.one_of(st.text(max_size=8), _json), words=_json, raw=st.binary(max_size=40))
def test_fuzz_word_manifest(tmp_path, image, words, raw):
    path = tmp_path / "words.jsonl"
    line = json.dumps({"image": image, "words": words})  # NaN/Infinity in words: json.dumps writes them
    path.write_bytes(line.encode() + b"\n" + raw)
    try:
        out = load_word_manifest(path)
    except AnnotationError as exc:
        assert str(exc).startswith(str(path))
        return
    for ws in out.values():
        for w in ws:
            x0, y0, x1, y1 = w["box"]
            assert all(math.isfinite(v) for v in w["box"]) and x1 > x0 and y1 > y0 and isinstance(w["text"], str)


_VALID = json.loads((RECORDS / "valid.json").read_text())


def _mutate(rec: dict, path: list, value) -> dict:
    rec = json.loads(json.dumps(rec))
    cur = rec
    for key in path[:-1]:
        cur = cur[key]
    cur[path[-1]] = value
    return rec


_PATHS = [["schema_version"], ["tokenizer"], ["tokenizer", "name"], ["dataset"], ["dataset", "id"], ["metrics"],
          ["metrics", "psnr"], ["metrics", "psnr", "value"], ["metrics", "psnr", "n"],
          ["metrics", "psnr", "higher_is_better"], ["protocol"], ["run"]]


@FUZZ
@given(where=st.sampled_from(_PATHS), value=_json, cut=st.integers(0, 2000), whole=_json)
def test_fuzz_result_records(where, value, cut, whole):
    texts = [json.dumps(_mutate(_VALID, where, value)), json.dumps(_VALID)[:cut], json.dumps(whole)]
    for text in texts:
        try:
            rec = parse_record(text, "fuzz.json")
        except RecordError as exc:
            assert str(exc).startswith("fuzz.json") and "Fix:" in str(exc)
            continue
        for m in rec["metrics"].values():  # what a reader may then rely on
            assert m.get("value") is None or math.isfinite(m["value"])
        assert isinstance(rec["tokenizer"]["name"], str) and isinstance(rec["dataset"]["id"], str)


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return {math.inf: "inf", -math.inf: "-inf"}.get(v, "nan" if v != v else repr(v))
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"


_toml_scalars = st.one_of(st.booleans(), st.integers(-1000, 1000), st.floats(allow_nan=True),
                          st.text(max_size=10))
_toml_values = st.recursive(_toml_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)), max_leaves=8)
_CARD_KEYS = ["kind", "entry", "description", "native_size", "size_multiple", "input_range", "reference",
              "default_run", "params", "weights", "published", "sweep", "official_preprocessing", "typo_key"]


@FUZZ
@given(family=st.dictionaries(st.sampled_from(_CARD_KEYS), _toml_values, max_size=4),
       variant=st.dictionaries(st.sampled_from(_CARD_KEYS), _toml_values, max_size=5),
       tail=st.text(max_size=30))
def test_fuzz_card_files(tmp_path, family, variant, tail):
    """Whatever a (UTF-8) card file holds, reading it gives cards or a CardError naming the file, never another
    error."""
    from vtbench.cards import CardError, parse_card_file
    body = "".join(f"{k} = {_toml_value(v)}\n" for k, v in family.items())
    body += "[variants.v]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in variant.items())
    for k, text in enumerate([body, body + tail]):
        path = tmp_path / f"fz{k}.toml"
        path.write_text(text, encoding="utf-8")
        try:
            parse_card_file(path)
        except CardError as exc:
            assert str(path) in str(exc)


def test_a_card_that_is_not_utf8_is_a_card_error(tmp_path):
    from vtbench.cards import CardError, parse_card_file
    (tmp_path / "x.toml").write_bytes(b'family = "x"\n[variants.v]\n\x80')
    with pytest.raises(CardError, match="x.toml"):
        parse_card_file(tmp_path / "x.toml")


# ============================================================================================ the command line

def test_info_prints_tables_published_numbers_and_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("VTBENCH_WEIGHTS", str(tmp_path))
    r = runner.invoke(app, ["info", "llamagen.vq16"])
    assert r.exit_code == 0, r.output
    out = r.output
    assert "published numbers" in out and "2.19" in out and "imagenet-val-50k" in out
    assert "parameters" in out and "codebook_size" in out and "{'" not in out  # tables, not raw dicts
    assert "$VTBENCH_WEIGHTS" in out and str(tmp_path / "vq_ds16_c2i.pt") in out.replace("\n", "")
    assert "Hugging Face hub" in out
    r = runner.invoke(app, ["info", "tiny.vq", "--json"])
    where = json.loads(r.stdout)["weights_search"]
    assert any(w["place"] == "bundled with vtbench" and w["found"] for w in where)


def test_ls_tokenizers_fits_a_screen(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    r = runner.invoke(app, ["ls", "tokenizers"])
    assert r.exit_code == 0
    lines = r.stdout.splitlines()
    assert max(map(len, lines)) <= 100 and len(lines) < 60
    assert "restok.l-128 " in r.stdout and "restok.l-128-k16" not in r.stdout and "sweep settings folded" in r.stdout
    assert "ResTok-L-128 trained" not in r.stdout
    r = runner.invoke(app, ["ls", "tokenizers", "restok*", "--settings", "--long"])
    assert "restok.l-128-k16" in r.stdout and "ResTok" in r.stdout


def test_compare_summary_and_each_null_reason_once(tmp_path):
    rec = json.loads((RECORDS / "valid.json").read_text())
    reason = "LPIPS weights not found: set VTBENCH_LPIPS_BACKBONE"
    for side, metrics in (("base", {"lpips": None, "ssim": None}), ("new", {"lpips": None, "ssim": None})):
        r2 = json.loads(json.dumps(rec))
        for k in metrics:
            r2["metrics"][k] = {"value": None, "n": 2, "higher_is_better": k == "ssim", "reason": reason}
        results.write_json_atomic(tmp_path / side / "result.json", r2)
    r = runner.invoke(app, ["compare", str(tmp_path / "new"), str(tmp_path / "base")])
    assert r.exit_code == 0 and r.output.count(reason) == 1 and "[1]" in r.output
    r = runner.invoke(app, ["compare", str(tmp_path / "new"), str(tmp_path / "base"), "--summary"])
    assert r.exit_code == 0 and "summary" in r.output and r.output.count("tiny.vq") == 1
    assert r.output.count(reason) == 1


def test_fid_warns_on_small_n(tmp_path):
    for name, shift in (("a", 0.0), ("b", 1.0)):
        np.savez(tmp_path / f"{name}.npz", mu=np.full(8, shift), sigma=np.eye(8), n=np.array(50))
    r = runner.invoke(app, ["fid", str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "--json"])
    assert r.exit_code == 0, r.output
    assert "50 < 2048 images" in json.loads(r.stdout)["warning"]
    r = runner.invoke(app, ["fid", str(tmp_path / "a.npz"), str(tmp_path / "b.npz")])
    assert "warning: FID on 50 < 2048 images" in r.output


def test_fid_on_an_empty_statistics_file_is_an_error_not_aborted(tmp_path):
    (tmp_path / "empty.npz").write_bytes(b"")
    np.savez(tmp_path / "b.npz", mu=np.zeros(8), sigma=np.eye(8))
    r = runner.invoke(app, ["fid", str(tmp_path / "empty.npz"), str(tmp_path / "b.npz")])
    assert r.exit_code == 1 and "empty.npz" in r.output and "Aborted" not in r.output


def test_overall_progress_across_tokenizers(tmp_path, caplog):
    import logging
    with caplog.at_level(logging.INFO, logger="vtbench"):
        run(["identity.none", "jpeg.q50"], _cfg(_folder(tmp_path / "d", 2), tmp_path / "out"))
    text = caplog.text
    assert "[1/2] identity.none (elapsed 0:00:00)" in text and "[2/2] jpeg.q50" in text and "left)" in text


def test_missing_extra_hints_match_the_readme(monkeypatch):
    """Every install hint comes from vtbench.extras.install_hint: no hand-written `pip install 'vtbench[X]'` or
    `pip install lpips` in the sources, every extra named in a hint exists in pyproject.toml, and from a checkout
    the hint is the README's line."""
    import re

    from vtbench import extras
    from vtbench._compat import tomllib
    readme = (ROOT / "README.md").read_text()
    declared = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    sources = {f: f.read_text() for f in (ROOT / "vtbench").rglob("*.py") if f.name != "extras.py"}
    used = {m for text in sources.values() for m in re.findall(r"install_hint\([\"'](\w+)[\"']\)", text)}
    used |= {m for text in sources.values() for m in re.findall(r"require\([\"'][\w.]+[\"'], [\"'](\w+)[\"']", text)}
    assert {"ocr", "diffusers", "lpips", "3d"} <= used, used
    assert used <= set(extras.EXTRAS) <= declared, (used, extras.EXTRAS, declared)
    offenders = [str(f) for f, text in sources.items()
                 if re.search(r"pip install '?vtbench\[|pip install (lpips|easyocr|diffusers|trimesh)\b", text)]
    assert not offenders, f"hand-written install hints in {offenders}: use vtbench.extras.install_hint"
    for extra in extras.EXTRAS:  # the checkout's hint is the README's line, which the README gives for each extra
        hint = extras.install_hint(extra)
        line = f'pip install -e ".[{extra}]"'
        assert hint.startswith(line) and line in readme, (extra, hint)
    monkeypatch.setattr("vtbench.paths.REPO_ROOT", None)  # an installed wheel
    assert extras.install_hint("ocr") == "pip install 'vtbench[ocr]'"
    with pytest.raises(extras.MissingExtra,
                       match=r"text preservation .*'no_such_pkg_vt'.*Fix: pip install 'vtbench\[ocr\]'"):
        extras.require("no_such_pkg_vt", "ocr")


def test_missing_3d_extra_fails_the_shape_run_first(tmp_path, monkeypatch):
    """`vtbench run --task shape` without the 3d extra: exit 1 before any work, with the install line."""
    from typer.testing import CliRunner

    from vtbench.cli import app
    monkeypatch.setitem(sys.modules, "igl", None)  # as if libigl were not installed: its import raises ImportError
    r = CliRunner().invoke(app, ["run", "--task", "shape", "--out", str(tmp_path / "out"), "--limit", "1"])
    assert r.exit_code == 1, r.output
    assert "'igl'" in r.output and 'pip install -e ".[3d]"' in r.output and "Traceback" not in r.output
    assert not list((tmp_path / "out").rglob("result.json"))
