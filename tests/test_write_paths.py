"""Every path vtbench writes is built from sanitised names and stays under its root; names never collide."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vtbench.paths import UnsafePathError, join_under, png_relpath, safe_name, safe_relpath
from vtbench.results import dataset_dirname, run_dir
from vtbench.runner import RunConfig, run

HOSTILE = ["../../escape.png", "/abs/escape.png", "..", ".", "", "a b.png", "a-b.png", "a_b.png", "x.jpg", "x.png", "x",
           "x.png.png", "dir/../../up.png", "C:\\win\\evil.png", "con\x00trol.png", "~tilde.png", "é.png",
           ".hidden.png", "-dash.png", "a" * 300]


def test_safe_name_keeps_plain_names_and_is_injective():
    assert safe_name("img_01.png") == "img_01.png" and safe_name("tiny.vq") == "tiny.vq"
    names = [safe_name(h) for h in HOSTILE]
    assert len(set(names)) == len(HOSTILE)
    for n in names:
        assert n and "/" not in n and "\\" not in n and "\x00" not in n and n not in (".", "..")
        assert not n.startswith(".") and len(n) <= 120
    assert safe_name("a b.png").endswith(".png") and "~" in safe_name("a b.png")


def test_relpaths_never_climb_and_pngs_never_collide(tmp_path):
    pngs = [png_relpath(h) for h in HOSTILE]
    assert len(set(pngs)) == len(HOSTILE)  # x.png, x.jpg, x and x.png.png all distinct
    for rel in pngs + [safe_relpath(h) for h in HOSTILE]:
        assert not rel.is_absolute() and ".." not in rel.parts
        join_under(tmp_path, rel)  # does not raise
    assert png_relpath("cls_a/img_01.png") == Path("cls_a/img_01.png")


def test_join_under_refuses_escapes_and_symlinks(tmp_path):
    with pytest.raises(UnsafePathError):
        join_under(tmp_path, "../x")
    with pytest.raises(UnsafePathError):
        join_under(tmp_path, "/etc/passwd")
    (tmp_path / "link").symlink_to(tmp_path.parent)
    with pytest.raises(UnsafePathError):
        join_under(tmp_path, "link", "x.png")


def test_same_named_dataset_folders_get_their_own_results(tmp_path):
    a = {"id": "val", "kind": "folder", "root": str(tmp_path / "a" / "val")}
    b = {"id": "val", "kind": "folder", "root": str(tmp_path / "b" / "val")}
    assert dataset_dirname(a) != dataset_dirname(b) and dataset_dirname(a).startswith("val-")
    assert dataset_dirname({"id": "embedded/photos", "kind": "embedded", "root": "/x"}) == "embedded-photos"
    assert run_dir(tmp_path, a, "../../tok", "reconstruction").parent.parent.parent == tmp_path
    hostile = {"id": "../../../etc", "kind": "folder", "root": "/etc"}
    assert run_dir(tmp_path, hostile, "t", "..").resolve().is_relative_to(tmp_path.resolve())


def _png(seed: int) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _parquet(path: Path, names: list[str]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq
    cells = [{"bytes": _png(k), "path": n} for k, n in enumerate(names)]
    struct_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    pq.write_table(pa.table({"image": pa.array(cells, type=struct_type)}), path)
    return path


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_parquet_paths_cannot_escape_save_reconstructions(tmp_path):
    """Issue 11, point 4: a parquet row's image.path of '../../x.png' or '/abs/x.png' wrote outside the folder."""
    names = ["../../escape.png", "/abs/escape.png", "a b.png", "a-b.png", "x.jpg", "x.png", "sub/../../../up.png"]
    work = tmp_path / "work"
    work.mkdir()
    data = _parquet(work / "data.parquet", names)
    outside_before = _tree(tmp_path)
    recon, out = work / "recon", work / "out"
    cfg = RunConfig(data=str(data), out=out, metrics=["psnr"], progress=False, preprocess="native",
                    save_reconstructions=recon)
    (rec,) = run(["jpeg.q90"], cfg)
    assert rec["dataset"]["n_used"] == len(names)
    written = sorted(p for p in recon.rglob("*.png"))
    assert len(written) == len(names)  # no two samples share a file
    for p in written:
        assert p.resolve().is_relative_to(recon.resolve())
    new = _tree(tmp_path) - outside_before
    assert all(n.startswith("work/") for n in new), sorted(n for n in new if not n.startswith("work/"))
    assert not (tmp_path / "escape.png").exists() and not Path("/abs/escape.png").exists()
    rdir = run_dir(out, rec["dataset"], "jpeg.q90", rec["protocol"]["name"]).resolve()
    thumbs = rec.get("thumbnails", [])
    assert thumbs
    for t in thumbs:
        for k in ("original", "reconstruction"):
            assert (rdir / t[k]).resolve().is_relative_to(rdir) and (rdir / t[k]).is_file()
    assert len(list((rdir / "thumbs").glob("*.png"))) == 2 * len(thumbs)  # distinct files per sample
