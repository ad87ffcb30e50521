"""Every committed key manifest (parameter names and shapes of an official checkpoint, dumped from the official
code) goes through its adapter's own unwrap / drop / remap path and matches the full-size architecture exactly.

Built on the meta device, so the 2.9B-parameter GigaTok XL-XXL is checked without allocating its weights."""

from __future__ import annotations

import pytest
import torch

from vtbench.config import all_cards, get_card
from vtbench.paths import CARDS_DIR
from vtbench.registry import load_object
from vtbench.tokenizers.official import CheckpointTokenizer, check_manifest, load_manifest, manifest_checkpoint

MANIFESTS = sorted((CARDS_DIR / "manifests").glob("*.json"))


def test_every_official_card_has_a_manifest():
    names = {p.stem for p in MANIFESTS}
    for name, card in all_cards().items():
        cls = load_object(card.entry)
        if isinstance(cls, type) and issubclass(cls, CheckpointTokenizer):
            assert name in names, f"{card.card_path}: {name} has no tokenizers/manifests/{name}.json"


@pytest.mark.parametrize("path", MANIFESTS, ids=[p.stem for p in MANIFESTS])
def test_manifest_matches_architecture(path):
    manifest = load_manifest(path)
    assert manifest.get("source") and manifest.get("keys"), f"{path}: needs source and keys"
    card = get_card(path.stem)
    cls = load_object(card.entry)
    with torch.device("meta"):
        model = cls.build_model(dict(card.params))
    state, ext = cls.state_from_object(manifest_checkpoint(manifest), dict(card.params), source=str(path))
    check_manifest(model, state, source=str(path))
    dropped = sorted(ext.dropped)
    assert dropped == sorted(manifest.get("dropped_prefixes", [])), (
        f"{path}: the adapter drops {dropped}, the manifest lists {manifest.get('dropped_prefixes')}")
