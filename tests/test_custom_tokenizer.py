"""The documented plugin route, end to end: the example card and adapter in examples/custom_tokenizer/ run through
the CLI (``vtbench run --cards examples/custom_tokenizer -t mytok.v1 --limit 2 --json``), and the recorded values
equal a direct NumPy computation of the same tokenizer on the same preprocessed images."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from vtbench.cards import use_cards
from vtbench.cli import app

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "custom_tokenizer"


@pytest.fixture(autouse=True)
def _reset_cards():
    yield
    use_cards(None)  # the in-process CLI call added the example's cards


def pool_quant_reference(img: np.ndarray, pool: int = 2, bits: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """uint8 HWC image -> (codes (3, H/p, W/p), uint8 HWC reconstruction): the mean of each p x p block, rounded
    half up to the nearest of 2**bits uniform levels in [0, 1], repeated over the block."""
    h, w, _ = img.shape
    top = 2 ** bits - 1
    blocks = img.astype(np.float64).reshape(h // pool, pool, w // pool, pool, 3).mean(axis=(1, 3)) / 255.0
    codes = np.floor(blocks * top + 0.5).astype(np.int64)  # exact here: block means are multiples of 1/1020
    rec = np.repeat(np.repeat(codes / top, pool, axis=0), pool, axis=1)
    return codes.transpose(2, 0, 1), np.round(np.clip(rec, 0, 1) * 255).astype(np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) / 255 - b.astype(np.float64) / 255) ** 2)
    return float(10 * np.log10(1.0 / mse))


def entropy_bits(codes: np.ndarray, k: int) -> float:
    p = np.bincount(codes.ravel(), minlength=k) / codes.size
    return float(-(p[p > 0] * np.log2(p[p > 0])).sum())


def test_example_tokenizer_through_the_cli_matches_a_direct_computation(tmp_path):
    r = CliRunner().invoke(app, ["run", "--cards", str(EXAMPLE), "-t", "mytok.v1", "--limit", "2", "--json",
                                 "--metrics", "psnr,compression", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    obj = json.loads(r.stdout)
    assert obj["tokenizer"] == "mytok.v1" and obj["n"] == 2 and obj["protocol"].startswith("reconstruction@")
    rows = {row["id"]: row for row in csv.DictReader(open(Path(obj["result"]).parent / "samples.csv"))}

    # the same two images, preprocessed as the protocol says (ADM centre crop at 256)
    from vtbench.config import load_protocol
    from vtbench.data.datasets import open_dataset
    from vtbench.data.policies import get_policy
    proto = load_protocol("reconstruction")
    ds = open_dataset("embedded", get_policy(proto.get("preprocessing.policy"), proto.get("preprocessing.resolution")),
                      limit=2, seed=0)
    assert sorted(ds.ids) == sorted(rows)
    values, all_codes = [], []
    for i in range(len(ds)):
        img = ds[i]["image"].numpy().transpose(1, 2, 0)  # uint8 HWC, 256x256
        codes, rec = pool_quant_reference(img)
        all_codes.append(codes)
        values.append(psnr(img, rec))
        assert float(rows[ds.ids[i]]["psnr"]) == pytest.approx(values[-1], rel=1e-12, abs=1e-12)
    m = obj["metrics"]
    assert m["psnr"] == pytest.approx(np.mean(values), rel=1e-12)
    # rate: 128 x 128 positions x 3 channels x 4 bits, exactly
    assert m["bits_per_image"] == 128 * 128 * 3 * 4 and m["tokens_per_image"] == 128 * 128
    assert m["bits_per_token"] == 12 and m["bpp"] == 3.0 and m["compression_ratio"] == 8.0
    # codebook statistics: one 16-level quantiser per channel, averaged over channels
    stacked = np.stack(all_codes)  # (N, 3, h, w)
    per_channel = [stacked[:, c] for c in range(3)]
    assert m["codebook_usage"] == pytest.approx(np.mean([len(np.unique(c)) / 16 for c in per_channel]), rel=1e-12)
    assert m["token_entropy"] == pytest.approx(np.mean([entropy_bits(c, 16) for c in per_channel]), rel=1e-9)


def test_example_card_is_listed_and_described(tmp_path):
    r = CliRunner().invoke(app, ["info", "mytok.v1", "--cards", str(EXAMPLE), "--json"])
    assert r.exit_code == 0, r.output
    card = json.loads(r.stdout)
    assert card["kind"] == "scalar" and card["card_path"] == str(EXAMPLE / "mytok.toml")
