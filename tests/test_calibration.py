"""Calibration: reproduce published reconstruction numbers with the real official checkpoints.

One test per ``[[variants.X.published]]`` entry with ``calibrate = true`` in a card. It runs only when

- the official weights resolve (``$VTBENCH_WEIGHTS``, or the hub when online), and
- ``VTBENCH_CALIBRATION_DATA`` points at the entry's dataset (for ``imagenet-val-50k``: an ImageNet validation
  folder of 50,000 JPEGs; ``VTBENCH_CALIBRATION_LIMIT`` may cap the number of images for a quick look, in which
  case rFID is not comparable and only PSNR/SSIM are checked),

and otherwise skips saying which of the two is missing. Marked ``calibration`` (excluded by default; run with
``pytest -m calibration``). A GPU is strongly advised: 50,000 images per variant.
"""

from __future__ import annotations

import os

import pytest

from vtbench.config import all_cards
from vtbench.tokenizers.weights import MissingWeightsError, resolve_weights


def _entries():
    out = []
    for name, card in sorted(all_cards().items()):
        for i, entry in enumerate(card.published or []):
            if entry.get("calibrate"):
                out.append(pytest.param(name, entry, id=f"{name}-{entry['metric']}-{i}"))
    return out


ENTRIES = _entries()


def official_policy(card, resolution: int):
    """The family's official evaluation preprocessing (card ``official_preprocessing``), else None (the
    protocol's policy): published numbers are reproduced as their authors computed them."""
    from vtbench.data.policies import get_policy
    spec = dict(card.official_preprocessing or {})
    if not spec:
        return None
    name = spec.pop("policy")
    return get_policy(name, resolution, **{k: v for k, v in spec.items() if k not in ("source", "note")})


def test_official_preprocessing_on_cards_builds_a_policy():
    """Every card's official preprocessing names a real policy with valid parameters (fast, default suite)."""
    seen = 0
    for name, card in sorted(all_cards().items()):
        if card.official_preprocessing:
            pol = official_policy(card, 256)
            assert pol.name == card.official_preprocessing["policy"] and card.official_preprocessing["source"]
            seen += 1
    assert seen >= 2  # RQ-VAE and VAR state theirs


def test_calibration_entries_are_well_formed():
    """Fast check that runs by default: every calibrated number has a source, a tolerance and a dataset."""
    for p in ENTRIES:
        name, entry = p.values
        for key in ("metric", "value", "dataset", "source", "tolerance", "resolution"):
            assert key in entry, f"{name}: published entry {entry} lacks {key!r}"
        assert float(entry["tolerance"]) > 0 and isinstance(entry["value"], (int, float))


@pytest.mark.calibration
@pytest.mark.parametrize("name,entry", ENTRIES)
def test_reproduces_published_number(name, entry, tmp_path):
    from vtbench.config import get_card
    from vtbench.runner import RunConfig, run

    card = get_card(name)
    try:
        resolve_weights(card.weights or {}, None, name=name)
    except MissingWeightsError as exc:
        pytest.skip(f"official weights absent: {str(exc).splitlines()[0]}")
    data = os.environ.get("VTBENCH_CALIBRATION_DATA")
    if not data:
        pytest.skip(f"set VTBENCH_CALIBRATION_DATA to the {entry['dataset']} images to calibrate {name}")
    limit = int(os.environ["VTBENCH_CALIBRATION_LIMIT"]) if os.environ.get("VTBENCH_CALIBRATION_LIMIT") else None
    metric = entry["metric"]
    if limit is not None and metric in ("rfid", "gfid", "pfid"):
        pytest.skip(f"{metric} needs the full {entry['dataset']}; VTBENCH_CALIBRATION_LIMIT={limit} is set")
    cfg = RunConfig(data=data, resolution=int(entry["resolution"]), limit=limit, out=tmp_path, progress=False,
                    metrics=[metric], batch_size=int(os.environ.get("VTBENCH_CALIBRATION_BATCH", "32")),
                    preprocess=official_policy(card, int(entry["resolution"])))
    record = run([name], cfg)[0]
    got = record["metrics"][metric]["value"]
    assert got is not None, record["metrics"][metric].get("reason")
    assert abs(got - float(entry["value"])) <= float(entry["tolerance"]), (
        f"{name}: {metric} {got:.4f} vs published {entry['value']} ({entry['source']}), "
        f"tolerance {entry['tolerance']}")
