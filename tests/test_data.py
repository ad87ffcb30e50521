"""Tests for vtbench.data: image loading, preprocessing policies, datasets. Fixtures are generated in tmp_path."""

from __future__ import annotations

import io
import json
import pickle
import random
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vtbench.data.datasets import DatasetError, ImageDataset, collate, open_dataset, select_subset
from vtbench.data.images import (
    DEFAULT_MAX_PIXELS,
    ImageLoadError,
    ImageTooLargeError,
    load_image,
    load_image_bytes,
    resolve_max_pixels,
)
from vtbench.data.policies import POLICIES, get_policy
from vtbench.registry import UnknownNameError


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _smooth_rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth colour image with a little noise (so resampling is well-behaved but not trivial)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 127 + 100 * np.sin(x / max(w, 1) * 3.1 + 0.3)
    g = 127 + 100 * np.cos(y / max(h, 1) * 2.7)
    b = 127 + 80 * np.sin((x + y) / max(h + w, 1) * 4.0)
    img = np.stack([r, g, b], axis=2) + _rng(seed).normal(0, 4, (h, w, 3))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _noise_rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return _rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _save(arr_or_img, path: Path, **kw) -> Path:
    img = arr_or_img if isinstance(arr_or_img, Image.Image) else Image.fromarray(arr_or_img)
    img.save(path, **kw)
    return path


def _mode(path: Path) -> str:
    with Image.open(path) as im:
        return im.mode


def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _png16_rgb(path: Path, arr: np.ndarray) -> Path:
    """Write a 16-bit-per-channel RGB PNG by hand (Pillow cannot write 48-bit PNGs)."""
    h, w, _ = arr.shape

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + arr[i].astype(">u2").tobytes() for i in range(h))
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    path.write_bytes(png)
    return path


# ============================================================================================== images


def test_rgb_png_roundtrip(tmp_path):
    arr = _noise_rgb(17, 23)
    out = load_image(_save(arr, tmp_path / "a.png"))
    assert out.dtype == np.uint8 and out.shape == (17, 23, 3)
    np.testing.assert_array_equal(out, arr)


def test_grayscale_and_bilevel(tmp_path):
    g = _rng(1).integers(0, 256, (9, 11), dtype=np.uint8)
    out = load_image(_save(g, tmp_path / "g.png"))
    assert out.shape == (9, 11, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], g)

    bits = _rng(2).integers(0, 2, (8, 10)).astype(bool)
    img1 = Image.fromarray(bits).convert("1")
    assert img1.mode == "1"
    out = load_image(_save(img1, tmp_path / "b.png"))
    assert set(np.unique(out)) <= {0, 255}
    np.testing.assert_array_equal(out[..., 0], np.where(bits, 255, 0))


def test_rgba_composited_on_white(tmp_path):
    rgba = _noise_rgb(12, 12, 3)
    alpha = _rng(4).integers(0, 256, (12, 12), dtype=np.uint8)
    alpha[0, :] = 0      # fully transparent row -> pure white
    alpha[1, :] = 255    # opaque row -> unchanged
    src = np.dstack([rgba, alpha])
    out = load_image(_save(src, tmp_path / "t.png"))
    a = alpha[..., None].astype(np.float64) / 255.0
    expected = rgba * a + 255.0 * (1.0 - a)
    assert np.abs(out.astype(np.float64) - expected).max() <= 0.5 + 1e-9
    np.testing.assert_array_equal(out[0], np.full((12, 3), 255))
    np.testing.assert_array_equal(out[1], rgba[1])


def test_la_composited_on_white(tmp_path):
    lum = _rng(5).integers(0, 256, (6, 7), dtype=np.uint8)
    alpha = _rng(6).integers(0, 256, (6, 7), dtype=np.uint8)
    img = Image.merge("LA", (Image.fromarray(lum), Image.fromarray(alpha)))
    out = load_image(_save(img, tmp_path / "la.png"))
    a = alpha.astype(np.float64) / 255.0
    expected = lum * a + 255.0 * (1 - a)
    assert np.abs(out[..., 1].astype(np.float64) - expected).max() <= 0.5 + 1e-9


def test_palette_with_and_without_transparency(tmp_path):
    pal = Image.new("P", (4, 2))
    palette = [255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9)
    pal.putpalette(palette)
    pal.putdata([0, 1, 2, 0, 1, 2, 0, 1])
    out = load_image(_save(pal, tmp_path / "p.png"))
    np.testing.assert_array_equal(out[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(out[0, 1], [0, 255, 0])
    np.testing.assert_array_equal(out[0, 2], [0, 0, 255])

    out = load_image(_save(pal, tmp_path / "pt.png", transparency=1))  # index 1 transparent
    np.testing.assert_array_equal(out[0, 1], [255, 255, 255])
    np.testing.assert_array_equal(out[0, 0], [255, 0, 0])

    gif = load_image(_save(pal, tmp_path / "p.gif", transparency=2))  # GIF isn't a dataset extension, but loads
    np.testing.assert_array_equal(gif[0, 2], [255, 255, 255])


def test_16bit_grayscale_png_scaled_not_clipped(tmp_path):
    vals = np.array([[0, 255, 256, 1000], [32768, 40000, 65280, 65535]], dtype=np.uint16)
    img = Image.fromarray(vals)
    path = _save(img, tmp_path / "g16.png")
    assert _mode(path) in ("I;16", "I")  # really a 16-bit file
    out = load_image(path)
    np.testing.assert_array_equal(out[..., 0], vals >> 8)
    np.testing.assert_array_equal(out[..., 0], [[0, 0, 1, 3], [128, 156, 255, 255]])


def test_16bit_rgb_png(tmp_path):
    vals = _rng(7).integers(0, 65536, (5, 6, 3)).astype(np.uint16)
    out = load_image(_png16_rgb(tmp_path / "rgb16.png", vals))
    np.testing.assert_array_equal(out, (vals >> 8).astype(np.uint8))


def test_32bit_int_tiff(tmp_path):
    vals = np.array([[0, 300], [4096, 65535]], dtype=np.int32)
    path = _save(Image.fromarray(vals), tmp_path / "i32.tif")
    assert _mode(path) == "I"
    out = load_image(path)
    np.testing.assert_array_equal(out[..., 0], vals >> 8)
    small = np.array([[0, 17], [200, 255]], dtype=np.int32)  # 8-bit data stored as 32-bit ints: kept
    out = load_image(_save(Image.fromarray(small), tmp_path / "i8.tif"))
    np.testing.assert_array_equal(out[..., 0], small)


def test_float_tiff_unit_and_255_ranges(tmp_path):
    unit = np.array([[0.0, 0.5, 1.0], [-0.2, np.nan, 0.25]], dtype=np.float32)
    path = _save(Image.fromarray(unit), tmp_path / "f.tif")
    assert _mode(path) == "F"
    out = load_image(path)[..., 0]
    np.testing.assert_array_equal(out, [[0, 128, 255], [0, 0, 64]])

    wide = np.array([[0.0, 12.4, 254.6], [300.0, -5.0, 128.0]], dtype=np.float32)
    out = load_image(_save(Image.fromarray(wide), tmp_path / "f255.tif"))[..., 0]
    np.testing.assert_array_equal(out, [[0, 12, 255], [255, 0, 128]])


def test_cmyk_jpeg(tmp_path):
    rgb = _smooth_rgb(32, 40, 8)
    path = tmp_path / "cmyk.jpg"
    Image.fromarray(rgb).convert("CMYK").save(path, format="JPEG", quality=98)
    assert _mode(path) == "CMYK"
    out = load_image(path)
    assert out.shape == (32, 40, 3)
    assert np.abs(out.astype(int) - rgb.astype(int)).mean() < 4


def test_exif_orientation_not_applied(tmp_path):
    arr = _smooth_rgb(20, 40)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW" -- must be ignored
    path = _save(arr, tmp_path / "o.jpg", exif=exif, quality=95)
    with Image.open(path) as im:
        assert im.getexif().get(0x0112) == 6
    assert load_image(path).shape == (20, 40, 3)


def test_truncated_png(tmp_path):
    data = _png_bytes(_noise_rgb(64, 64))
    path = tmp_path / "trunc.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError) as ei:
        load_image(path)
    msg = str(ei.value)
    assert str(path) in msg and "truncated" in msg.lower() and "Fix:" in msg
    with pytest.raises(ImageLoadError):
        load_image_bytes(data[: len(data) // 2], "row/3")


def test_text_file_named_png_and_empty_and_missing(tmp_path):
    path = tmp_path / "fake.png"
    path.write_text("<html>404 not found</html>")
    with pytest.raises(ImageLoadError) as ei:
        load_image(path)
    assert "fake.png" in str(ei.value) and "not an image" in str(ei.value)

    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageLoadError):
        load_image(empty)
    with pytest.raises(ImageLoadError, match="no such file"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageLoadError, match="empty"):
        load_image_bytes(b"", "x/0")


def test_image_load_error_pickles():
    err = ImageLoadError("/a/b.png", "broken", "fix it")
    back = pickle.loads(pickle.dumps(err))
    assert isinstance(back, ImageLoadError) and back.path == "/a/b.png" and str(back) == str(err)
    big = pickle.loads(pickle.dumps(ImageTooLargeError("x.png", "too big")))
    assert isinstance(big, ImageTooLargeError)


def test_huge_image_limits(tmp_path, monkeypatch):
    monkeypatch.delenv("VTBENCH_MAX_PIXELS", raising=False)
    path = _save(np.zeros((200, 200, 3), np.uint8), tmp_path / "big.png")
    before = Image.MAX_IMAGE_PIXELS
    # > 2x the limit: Pillow's DecompressionBombError path
    with pytest.raises(ImageTooLargeError) as ei:
        load_image(path, max_pixels=1000)
    msg = str(ei.value)
    assert "big.png" in msg and "max_pixels" in msg and "VTBENCH_MAX_PIXELS" in msg
    assert "40000" in msg  # the pixel count needed, recovered from Pillow's message
    # between 1x and 2x: vtbench's own check (Pillow only warns there)
    with pytest.raises(ImageTooLargeError, match="200x200"):
        load_image(path, max_pixels=30000)
    assert Image.MAX_IMAGE_PIXELS == before  # the global is restored
    assert load_image(path, max_pixels=40000).shape == (200, 200, 3)
    # environment variable
    monkeypatch.setenv("VTBENCH_MAX_PIXELS", "1e3")
    with pytest.raises(ImageTooLargeError):
        load_image(path)
    with pytest.raises(ImageTooLargeError):
        load_image_bytes(path.read_bytes(), "parquet-row")
    assert load_image(path, max_pixels=1e6).shape == (200, 200, 3)  # the argument wins
    monkeypatch.setenv("VTBENCH_MAX_PIXELS", "lots")
    with pytest.raises(ValueError, match="VTBENCH_MAX_PIXELS"):
        load_image(path)
    monkeypatch.delenv("VTBENCH_MAX_PIXELS")
    assert resolve_max_pixels() == DEFAULT_MAX_PIXELS
    assert isinstance(ImageTooLargeError("a", "b"), ImageLoadError)


def test_load_image_bytes_matches_file(tmp_path):
    rgba = np.dstack([_noise_rgb(8, 8), _rng(9).integers(0, 256, (8, 8), dtype=np.uint8)])
    path = _save(rgba, tmp_path / "x.png")
    np.testing.assert_array_equal(load_image(path), load_image_bytes(path.read_bytes(), "x"))


# ============================================================================================== policies


def _adm_reference(arr: np.ndarray, size: int) -> np.ndarray:
    """guided-diffusion's center_crop_arr, written out step by step."""
    pil = Image.fromarray(arr)
    w, h = pil.size
    while w >= 2 * size and h >= 2 * size:
        w, h = w // 2, h // 2
        pil = pil.resize((w, h), Image.BOX)
    short = w if w < h else h
    new_w = int(round(w * (size / short)))
    new_h = int(round(h * (size / short)))
    pil = pil.resize((new_w, new_h), Image.BICUBIC)
    x0, y0 = (new_w - size) // 2, (new_h - size) // 2
    return np.array(pil.crop((x0, y0, x0 + size, y0 + size)))


@pytest.mark.parametrize("hw", [(600, 1000), (513, 257), (256, 256), (80, 100), (1000, 600), (2000, 513),
                                (1024, 1024), (511, 767)])
def test_adm_center_crop_matches_reference(hw):
    arr = _smooth_rgb(*hw, seed=hw[0])
    pol = get_policy("adm-center-crop", 256)
    out = pol.prepare(arr)
    assert out.shape == (256, 256, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, _adm_reference(arr, 256))
    if hw == (256, 256):
        np.testing.assert_array_equal(out, arr)


def test_adm_model_side_identity():
    pol = get_policy("adm-center-crop", 16)
    x = torch.from_numpy(_noise_rgb(16, 16).transpose(2, 0, 1).copy())
    y, ctx = pol.to_model(x)
    assert y.dtype == torch.float32 and y.shape == (3, 16, 16)
    torch.testing.assert_close(y, x.float() / 255)
    torch.testing.assert_close(pol.from_model(y, ctx), y)
    assert pol.from_model(y * 3 - 1, ctx).min() >= 0 and pol.from_model(y * 3 - 1, ctx).max() <= 1


@pytest.mark.parametrize("hw", [(600, 1000), (513, 257), (256, 256), (80, 100)])
def test_resize_cover_crop(hw):
    arr = _smooth_rgb(*hw)
    out = get_policy("resize-cover-crop", 256).prepare(arr)
    h, w = hw
    scale = max(256 / w, 256 / h)
    nw, nh = round(w * scale), round(h * scale)
    ref = Image.fromarray(arr).resize((nw, nh), Image.LANCZOS)
    x0, y0 = (nw - 256) // 2, (nh - 256) // 2
    np.testing.assert_array_equal(out, np.array(ref)[y0:y0 + 256, x0:x0 + 256])
    if hw == (256, 256):
        np.testing.assert_array_equal(out, arr)


def test_pad_restore_padding_layout():
    pol = get_policy("pad-restore", 256)
    arr = _noise_rgb(128, 256)
    assert pol.prepare(arr) is arr  # the original is the image itself
    x = torch.from_numpy(arr.transpose(2, 0, 1).copy())
    y, ctx = pol.to_model(x)  # side 256 == S: padding only, no resampling
    assert y.shape == (3, 256, 256) and y.dtype == torch.float32
    assert ctx["top"] == 64 and ctx["left"] == 0
    assert torch.all(y[:, :64] == 0) and torch.all(y[:, 192:] == 0)
    torch.testing.assert_close(y[:, 64:192], x.float() / 255)
    back = pol.from_model(y, ctx)
    torch.testing.assert_close(back, x.float() / 255)

    white = get_policy("pad-restore", 64, pad_value=1.0)
    y, ctx = white.to_model(torch.zeros(3, 101, 60, dtype=torch.uint8))
    assert ctx["side"] == 101 and ctx["left"] == 20  # (101 - 60) // 2, odd pixel right
    assert white.describe()["pad_value"] == 1.0


@pytest.mark.parametrize("hw,size", [((300, 200), 512), ((200, 300), 256), ((97, 131), 128), ((100, 100), 64)])
def test_pad_restore_roundtrip(hw, size):
    pol = get_policy("pad-restore", size)
    arr = _smooth_rgb(*hw, seed=3)
    x = torch.from_numpy(arr.transpose(2, 0, 1).copy())
    y, ctx = pol.to_model(x)
    assert y.shape == (3, size, size) and 0 <= y.min() and y.max() <= 1
    back = pol.from_model(y, ctx)  # identity "tokenizer"
    assert back.shape == (3, *hw) and back.dtype == torch.float32
    err = (back - x.float() / 255).abs()
    assert err.mean() < (0.01 if size >= max(hw) else 0.03)
    # a batch gives the same as one at a time
    yb, ctxb = pol.to_model(torch.stack([x, x]))
    torch.testing.assert_close(yb[1], y)
    torch.testing.assert_close(pol.from_model(yb, ctxb)[0], back)


def test_native_policy():
    pol = get_policy("native", 256)
    assert pol.resolution is None
    arr = _noise_rgb(31, 45)
    np.testing.assert_array_equal(pol.prepare(arr), arr)
    x = torch.from_numpy(arr.transpose(2, 0, 1).copy())
    y, ctx = pol.to_model(x)
    assert y.shape == (3, 31, 45)
    torch.testing.assert_close(pol.from_model(y, ctx), x.float() / 255)


def test_native_or_pad_follows_the_tokenizer():
    x = torch.randint(0, 256, (3, 40, 60), dtype=torch.uint8)
    pol = get_policy("native-or-pad", 32)
    y, ctx = pol.to_model(x)  # unbound: native
    assert ctx["mode"] == "native" and y.shape == (3, 40, 60)
    conv = pol.bind(lambda h, w: h % 8 == 0 and w % 4 == 0)  # a convolutional tokenizer: 40x60 is fine
    y, ctx = conv.to_model(x)
    assert ctx["mode"] == "native" and y.shape == (3, 40, 60)
    torch.testing.assert_close(conv.from_model(y, ctx), x.float() / 255)
    fixed = pol.bind(lambda h, w: (h, w) == (32, 32))  # a fixed-size tokenizer: padded to 60x60, resized to 32
    y, ctx = fixed.to_model(x)
    assert ctx["mode"] == "pad" and y.shape == (3, 32, 32)
    back = fixed.from_model(y, ctx)
    assert back.shape == (3, 40, 60)
    ref, rctx = get_policy("pad-restore", 32).to_model(x)
    torch.testing.assert_close(y, ref)
    torch.testing.assert_close(back, get_policy("pad-restore", 32).from_model(ref, rctx))
    assert fixed.describe() == pol.describe() and pol.describe()["otherwise"]["name"] == "pad-restore"


def test_get_policy_errors_and_describe():
    assert set(POLICIES) == {"adm-center-crop", "resize-cover-crop", "pad-restore", "native", "native-or-pad",
                             "torchvision-resize-crop"}
    with pytest.raises(UnknownNameError) as ei:
        get_policy("pad-restor", 256)
    assert "pad-restore" in str(ei.value)
    with pytest.raises(ValueError):
        get_policy("adm-center-crop", None)
    with pytest.raises(ValueError):
        get_policy("resize-cover-crop", 0)
    for name in POLICIES:
        d = get_policy(name, 256).describe()
        assert d["name"] == name and "resolution" in d
        json.dumps(d)
    assert get_policy("adm-center-crop", 256) == get_policy("adm-center-crop", 256)
    assert get_policy("adm-center-crop", 256) != get_policy("adm-center-crop", 512)
    with pytest.raises(TypeError):
        get_policy("native").prepare(np.zeros((4, 4), np.uint8))


# ============================================================================================== datasets


def _make_class_folder(root: Path) -> dict[str, tuple[np.ndarray, int]]:
    """root/{cat,dog,empty}/..., plus noise: hidden files, a non-image, a hidden folder."""
    made = {}
    specs = [("dog/d1.png", 1), ("cat/c1.png", 0), ("cat/sub/c2.jpg", 0), ("dog/D2.JPEG", 1), ("cat/c3.webp", 0)]
    for k, (rel, label) in enumerate(specs):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        arr = _smooth_rgb(40 + k, 50, seed=k)
        fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}[p.suffix.lower()]
        Image.fromarray(arr).save(p, format=fmt,
                                  **({"quality": 95} if fmt == "JPEG" else {"lossless": True} if fmt == "WEBP" else {}))
        made[rel] = (arr, label)
    (root / "cat" / ".hidden.png").write_bytes(_png_bytes(_noise_rgb(4, 4)))
    (root / ".cache").mkdir()
    (root / ".cache" / "x.png").write_bytes(_png_bytes(_noise_rgb(4, 4)))
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / "zzz_empty").mkdir()  # an empty class folder still takes a class index (as ImageFolder)
    return made


def test_folder_dataset_with_classes(tmp_path):
    root = tmp_path / "pets"
    made = _make_class_folder(root)
    ds = open_dataset(root, get_policy("adm-center-crop", 32))
    assert isinstance(ds, ImageDataset)
    assert ds.ids == sorted(made)
    assert ds.classes == ["cat", "dog", "zzz_empty"]
    assert ds.info.kind == "folder" and ds.info.n_total == 5 and ds.info.n_selected == 5
    assert ds.info.policy["name"] == "adm-center-crop" and ds.info.root == str(root.resolve())
    for i, sid in enumerate(ds.ids):
        s = ds[i]
        assert s["id"] == sid and s["error"] is None and s["label"] == made[sid][1]
        assert s["image"].dtype == torch.uint8 and s["image"].shape == (3, 32, 32)
    # native policy: pixels exactly as loaded
    nat = open_dataset(root, get_policy("native"))
    k = nat.ids.index("dog/d1.png")
    np.testing.assert_array_equal(nat[k]["image"].permute(1, 2, 0).numpy(), made["dog/d1.png"][0])
    json.dumps(ds.info.to_dict())


def test_imagenet_val_layout_and_flat_folder(tmp_path):
    val = tmp_path / "imagenet" / "val"
    for cls, n in (("n01440764", 2), ("n01443537", 1)):
        for i in range(n):
            p = val / cls / f"ILSVRC2012_val_{cls[-3:]}{i:05d}.JPEG"
            p.parent.mkdir(parents=True, exist_ok=True)
            _save(_smooth_rgb(30, 40, i), p, format="JPEG")
    ds = open_dataset(val, get_policy("native"))
    assert ds.info.split == "val" and ds.labels == [0, 0, 1] and ds.info.id == "val"
    ds2 = open_dataset(tmp_path / "imagenet", get_policy("native"), split="val")
    assert ds2.ids == ds.ids and ds2.info.revision == ds.info.revision

    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(3):
        _save(_noise_rgb(8, 8, i), flat / f"{i}.bmp")
    (flat / "sub").mkdir()
    _save(_noise_rgb(8, 8), flat / "sub" / "x.tif")
    ds = open_dataset(flat, get_policy("native"))
    assert ds.ids == ["0.bmp", "1.bmp", "2.bmp", "sub/x.tif"] and ds.labels == [-1] * 4 and ds.classes is None


def test_revision_is_content_independent_but_change_sensitive(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        root.mkdir()
        for i in range(4):
            _save(_noise_rgb(10, 10, i), root / f"{i}.png")
    pol = get_policy("native")
    ra, rb = open_dataset(a, pol).info.revision, open_dataset(b, pol).info.revision
    assert ra == rb and len(ra) == 12
    _save(_noise_rgb(12, 10, 0), b / "0.png")  # different size
    assert open_dataset(b, pol).info.revision != ra
    _save(_noise_rgb(10, 10, 9), a / "9.png")  # added file
    assert open_dataset(a, pol).info.revision != ra


def test_subset_is_deterministic_under_shuffled_listing(tmp_path):
    names = [f"img_{i:03d}.png" for i in range(40)]
    shuffled = names[:]
    random.Random(1).shuffle(shuffled)
    pick = [names[i] for i in select_subset(names, 7, seed=0)]
    pick_shuffled = sorted(shuffled[i] for i in select_subset(shuffled, 7, seed=0))
    assert pick == pick_shuffled and len(pick) == 7 and pick == sorted(pick)
    assert [names[i] for i in select_subset(names, 7, seed=1)] != pick
    assert select_subset(names, 40) == list(range(40)) == select_subset(names, 1000) == select_subset(names, None)
    # prefix property: a smaller subset is contained in a larger one with the same seed
    assert set(pick) <= {names[i] for i in select_subset(names, 20, seed=0)}

    # folders built in different orders give the same subset
    roots = []
    for order, tag in ((names, "x"), (shuffled, "y")):
        root = tmp_path / tag
        root.mkdir()
        for n in order:
            _save(np.zeros((4, 4, 3), np.uint8), root / n)
        roots.append(root)
    d1 = open_dataset(roots[0], get_policy("native"), limit=7, seed=0)
    d2 = open_dataset(roots[1], get_policy("native"), limit=7, seed=0)
    assert d1.ids == d2.ids == pick and d1.info.selection == d2.info.selection
    assert d1.info.n_total == 40 and d1.info.n_selected == 7 and d1.info.limit == 7
    assert len(open_dataset(roots[0], get_policy("native"), limit=100)) == 40
    with pytest.raises(DatasetError):
        open_dataset(roots[0], get_policy("native"), limit=0)


def test_corrupt_sample_is_reported_not_raised(tmp_path):
    root = tmp_path / "mixed"
    root.mkdir()
    _save(_noise_rgb(20, 20), root / "a_good.png")
    data = _png_bytes(_noise_rgb(64, 64))
    (root / "b_trunc.png").write_bytes(data[:200])
    (root / "c_text.png").write_text("hello")
    _save(_noise_rgb(20, 20, 1), root / "d_good.jpg")
    ds = open_dataset(root, get_policy("resize-cover-crop", 16))
    samples = [ds[i] for i in range(len(ds))]
    assert [s["error"] is None for s in samples] == [True, False, False, True]
    assert samples[1]["image"] is None and "b_trunc.png" in samples[1]["error"]
    assert "c_text.png" in samples[2]["error"]
    batch = collate(samples)
    assert batch["ids"] == ["a_good.png", "d_good.jpg"]
    assert [im.shape for im in batch["images"]] == [(3, 16, 16)] * 2
    assert batch["labels"].tolist() == [-1, -1] and batch["labels"].dtype == torch.long
    assert [e[0] for e in batch["errors"]] == ["b_trunc.png", "c_text.png"]

    loader = torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=collate, num_workers=0)
    got = [b for b in loader]
    assert sum(len(b["ids"]) for b in got) == 2 and sum(len(b["errors"]) for b in got) == 2


def test_huge_image_in_dataset_is_an_error_sample(tmp_path):
    root = tmp_path / "h"
    root.mkdir()
    _save(np.zeros((100, 100, 3), np.uint8), root / "big.png")
    _save(np.zeros((10, 10, 3), np.uint8), root / "small.png")
    ds = open_dataset(root, get_policy("native"), max_pixels=5000)
    assert ds[0]["error"] is not None and "max_pixels" in ds[0]["error"]
    assert ds[1]["error"] is None


def _write_hf_parquet(path: Path, arrays, labels, paths, row_group_size=3, corrupt_row=None):
    import pyarrow as pa
    import pyarrow.parquet as pq

    cells = []
    for k, (arr, p) in enumerate(zip(arrays, paths)):
        b = _png_bytes(arr)
        if k == corrupt_row:
            b = b"garbage" + b[:50]
        cells.append({"bytes": b, "path": p})
    struct_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({"image": pa.array(cells, type=struct_type), "label": pa.array(labels, type=pa.int64()),
                      "caption": pa.array([f"c{k}" for k in range(len(arrays))])})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def test_parquet_hf_struct_layout(tmp_path):
    arrays = [_smooth_rgb(20 + k, 30, seed=k) for k in range(8)]
    paths = [f"img_{k}.png" for k in range(8)]
    path = _write_hf_parquet(tmp_path / "ds" / "test-00000-of-00001.parquet", arrays, list(range(8)), paths,
                             corrupt_row=5)
    ds = open_dataset(path, get_policy("native"))
    assert ds.info.kind == "parquet" and ds.info.split == "test" and ds.info.n_total == 8
    assert ds.ids == paths  # storage order, struct paths as ids
    assert ds.labels == list(range(8))
    assert ds.info.extra["image_column"] == "image" and ds.info.extra["label_column"] == "label"
    for i in range(8):
        s = ds[i]
        if i == 5:
            assert s["image"] is None and "img_5.png" in s["error"] and s["label"] == 5
            continue
        assert s["error"] is None
        np.testing.assert_array_equal(s["image"].permute(1, 2, 0).numpy(), arrays[i])
    assert ds._cache is not None and ds._cache[0] == (0, 2)  # only the last row group is held

    # random access, then a worker process (pickling drops the handles and the cache)
    np.testing.assert_array_equal(ds[1]["image"].permute(1, 2, 0).numpy(), arrays[1])
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._cache is None and clone._open == {}
    np.testing.assert_array_equal(clone[7]["image"].permute(1, 2, 0).numpy(), arrays[7])
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate, num_workers=2)
    got_ids, got_err = [], []
    for b in loader:
        got_ids += b["ids"]
        got_err += b["errors"]
    assert got_ids == [p for k, p in enumerate(paths) if k != 5] and [e[0] for e in got_err] == ["img_5.png"]

    # limit on parquet
    sub = open_dataset(path, get_policy("adm-center-crop", 16), limit=3, seed=2)
    assert len(sub) == 3 and sub.ids == [paths[i] for i in select_subset(paths, 3, seed=2)]
    assert all(sub[i]["image"].shape == (3, 16, 16) for i in range(3) if sub[i]["error"] is None)


def test_parquet_ids_fall_back_to_rows_and_dir_of_files(tmp_path):
    arrays = [_noise_rgb(8, 8, k) for k in range(5)]
    root = tmp_path / "pq"
    _write_hf_parquet(root / "train-00000-of-00002.parquet", arrays[:3], [0, 1, 2], ["a.png", "a.png", "b.png"])
    _write_hf_parquet(root / "train-00001-of-00002.parquet", arrays[3:], [3, 4], [None, None])
    ds = open_dataset(root, get_policy("native"))
    assert ds.ids == ["train-00000-of-00002/0", "train-00000-of-00002/1", "train-00000-of-00002/2",
                      "train-00001-of-00002/0", "train-00001-of-00002/1"]
    assert ds.info.split == "train" and ds.info.id == "pq"
    for i in range(5):
        np.testing.assert_array_equal(ds[i]["image"].permute(1, 2, 0).numpy(), arrays[i])
    with pytest.raises(DatasetError, match="split"):
        open_dataset(root, get_policy("native"), split="validation")
    assert len(open_dataset(root, get_policy("native"), split="train")) == 5
    # a revision that changes with the data
    rev = ds.info.revision
    _write_hf_parquet(root / "train-00001-of-00002.parquet", arrays[3:4], [3], [None])
    assert open_dataset(root, get_policy("native")).info.revision != rev


def test_parquet_binary_detection(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays = [_noise_rgb(6, 9, k) for k in range(4)]
    one = tmp_path / "one.parquet"
    pq.write_table(pa.table({"data": pa.array([_png_bytes(a) for a in arrays], type=pa.large_binary()),
                             "target": pa.array([3, 1, 4, 1], type=pa.int32())}), one)
    ds = open_dataset(one, get_policy("native"))
    assert ds.ids == ["one/0", "one/1", "one/2", "one/3"] and ds.labels == [3, 1, 4, 1]
    np.testing.assert_array_equal(ds[2]["image"].permute(1, 2, 0).numpy(), arrays[2])

    two = tmp_path / "two.parquet"
    pq.write_table(pa.table({"a": pa.array([_png_bytes(a) for a in arrays]),
                             "b": pa.array([_png_bytes(a[:2, :2]) for a in arrays])}), two)
    with pytest.raises(DatasetError, match="image_column"):
        open_dataset(two, get_policy("native"))
    ds = open_dataset(two, get_policy("native"), image_column="b")
    assert ds[0]["image"].shape == (3, 2, 2)
    with pytest.raises(DatasetError, match="Did you mean"):
        open_dataset(two, get_policy("native"), image_column="bb")

    none = tmp_path / "none.parquet"
    pq.write_table(pa.table({"x": [1, 2]}), none)
    with pytest.raises(DatasetError, match="no image column"):
        open_dataset(none, get_policy("native"))


def test_embedded_specs(tmp_path, monkeypatch):
    import vtbench.paths

    monkeypatch.setattr(vtbench.paths, "DATA_DIR", tmp_path / "data")
    with pytest.raises(DatasetError, match="embedded"):
        open_dataset("embedded", get_policy("native"))
    for sub in ("photos", "text", "detail"):
        d = tmp_path / "data" / "embedded" / sub
        d.mkdir(parents=True)
        for i in range(2):
            _save(_noise_rgb(256, 256, i), d / f"{sub}_{i}.png")
    ds = open_dataset("embedded", get_policy("adm-center-crop", 256))
    assert ds.info.kind == "embedded" and ds.info.id == "embedded" and len(ds) == 6
    assert ds.classes == ["detail", "photos", "text"]
    np.testing.assert_array_equal(ds[0]["image"].permute(1, 2, 0).numpy(), _noise_rgb(256, 256, 0))
    text = open_dataset("embedded/text", get_policy("native"))
    assert text.info.id == "embedded/text" and text.ids == ["text_0.png", "text_1.png"]
    assert text.labels == [-1, -1]
    with pytest.raises(DatasetError, match="text"):
        open_dataset("embedded/txt", get_policy("native"))


def test_bad_specs(tmp_path):
    pol = get_policy("native")
    with pytest.raises(DatasetError) as ei:
        open_dataset(tmp_path / "nope", pol)
    assert "nope" in str(ei.value) and "parquet" in str(ei.value) and "embedded" in str(ei.value)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DatasetError, match="not a .parquet"):
        open_dataset(tmp_path / "file.txt", pol)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        open_dataset(tmp_path / "empty", pol)
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(DatasetError, match="parquet"):
        open_dataset(tmp_path / "bad.parquet", pol)
    with pytest.raises(TypeError):
        open_dataset(tmp_path, "native")  # type: ignore[arg-type]


@pytest.mark.parametrize("interp,ratio,size", [("lanczos", 1.125, (500, 375)), ("bilinear", 1.0, (333, 480)),
                                                ("bicubic", 1.0, (256, 256))])
def test_torchvision_resize_crop_matches_its_definition_in_pil(interp, ratio, size):
    """torchvision's Resize(short side) + CenterCrop, written out with PIL: long side int(r * long / short),
    crop offset round((dim - S) / 2)."""
    from PIL import Image
    w, h = size
    img = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    pol = get_policy("torchvision-resize-crop", 256, interpolation=interp, resize_ratio=ratio)
    r = round(ratio * 256)
    nw, nh = (r, int(r * h / w)) if w <= h else (int(r * w / h), r)
    res = {"lanczos": Image.LANCZOS, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}[interp]
    big = np.asarray(Image.fromarray(img).resize((nw, nh), resample=res))
    top, left = int(round((nh - 256) / 2.0)), int(round((nw - 256) / 2.0))
    np.testing.assert_array_equal(pol.prepare(img), big[top:top + 256, left:left + 256])
    assert pol.describe()["interpolation"] == interp and pol.describe()["resize_ratio"] == ratio
    with pytest.raises(UnknownNameError):
        get_policy("torchvision-resize-crop", 256, interpolation="lanczso")
