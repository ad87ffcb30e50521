"""Protocol files hold only keys vtbench reads (the rest under [notes]); unknown keys are did-you-mean errors."""

from __future__ import annotations

import dataclasses
import shutil

import pytest

from vtbench import config
from vtbench.config import METRIC_SETTINGS, ProtocolError, list_protocols, load_protocol
from vtbench.paths import PROTOCOLS_DIR


def test_every_builtin_protocol_passes_its_schema():
    for name in list_protocols():
        p = load_protocol(name)
        assert p.version and p.description, name
        assert "notes" not in p.settings


@pytest.fixture
def proto_dir(tmp_path, monkeypatch):
    for f in PROTOCOLS_DIR.glob("*.toml"):
        shutil.copy(f, tmp_path / f.name)
    monkeypatch.setattr(config, "PROTOCOLS_DIR", tmp_path)
    return tmp_path


@pytest.mark.parametrize("old, new, table, hint", [
    ("[preprocessing]\npolicy", "[preprocessing]\npolcy = 1\npolicy", "[preprocessing]", "policy"),
    ("[metrics]\ndefault", "[metrics]\ndefualt = []\ndefault", "[metrics]", "default"),
    ("[pfid]\n", "[pfid]\nalpah = 0.25\n", "[pfid]", "alpha"),
    ('description = "input', 'descripton = "x"\ndescription = "input', "[top level]", "description"),
])
def test_unknown_protocol_key_is_an_error(proto_dir, old, new, table, hint):
    path = proto_dir / "reconstruction.toml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(ProtocolError) as exc:
        load_protocol("reconstruction")
    msg = str(exc.value)
    assert str(path) in msg and table in msg and f"Did you mean {hint!r}" in msg and "[notes]" in msg


def test_notes_are_free_form_and_not_settings(proto_dir):
    path = proto_dir / "reconstruction.toml"
    path.write_text(path.read_text() + '\n[notes.anything]\nwhatever = "prose"\n')
    p = load_protocol("reconstruction")
    assert p.notes["anything"] == {"whatever": "prose"} and "notes" not in p.settings


def test_probe_size_tables_are_checked(proto_dir):
    path = proto_dir / "probe.toml"
    text = path.read_text()
    assert text.count("n_layer = 8\n") == 1  # sizes.S
    path.write_text(text.replace("n_layer = 8\n", "n_layers = 8\n"))
    with pytest.raises(ProtocolError, match=r"\[sizes.S\] unknown key 'n_layers'. Did you mean 'n_layer'"):
        load_protocol("probe")


def test_metric_tables_match_what_the_metrics_read():
    """The schema's metric tables are the settings each metric reads (kept in step with the metric code)."""
    from vtbench.metrics.detail import DEFAULT_SETTINGS
    from vtbench.metrics.pfid import PerturbationSpec
    from vtbench.metrics.text import OCR_DEFAULTS, TEXT_DEFAULTS
    assert set(METRIC_SETTINGS["detail"]) == set(DEFAULT_SETTINGS)
    assert set(METRIC_SETTINGS["pfid"]) == {f.name for f in dataclasses.fields(PerturbationSpec)}
    assert set(METRIC_SETTINGS["text"]) <= set(TEXT_DEFAULTS)
    assert set(METRIC_SETTINGS["ocr"]) <= set(OCR_DEFAULTS)
