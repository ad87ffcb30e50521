"""Card files: the typed schema (typos are errors naming file, variant and key), card sources (--cards,
$VTBENCH_CARDS, entry points), clashes with built-in names, and file-relative adapter entries."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vtbench import cards as cards_mod
from vtbench.cards import CardError, all_cards, get_card, load_entry, parse_card_file, use_cards
from vtbench.cli import app
from vtbench.paths import CARDS_DIR

runner = CliRunner()
GOOD = 'family = "x"\nkind = "vq"\nentry = "a.b:C"\n'


@pytest.fixture(autouse=True)
def _no_extra_cards(monkeypatch):
    monkeypatch.delenv(cards_mod.ENV_VAR, raising=False)
    use_cards(None)
    yield
    use_cards(None)


def _card(tmp_path: Path, text: str, name: str = "x.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("body, where, bad, hint", [
    ("[variants.v]\ndefualt_run = true\n", "variant 'v'", "defualt_run", "default_run"),
    ("native_sise = 256\n[variants.v]\n", "family level", "native_sise", "native_size"),
    ("[defaults]\nsize_multipel = 8\n[variants.v]\n", "[defaults]", "size_multipel", "size_multiple"),
    ('[variants.v]\n[variants.v.weights]\nfiel = "w.pt"\n', "variant 'v': [weights]", "fiel", "file"),
    ('[variants.v]\n[[variants.v.published]]\nmetric = "rfid"\nvalue = 1.0\ndataset = "d"\nsource = "s"\n'
     'tolerence = 0.1\n', "variant 'v': published[0]", "tolerence", "tolerance"),
])
def test_unknown_keys_name_file_variant_and_suggestion(tmp_path, body, where, bad, hint):
    path = _card(tmp_path, GOOD + body)
    with pytest.raises(CardError) as exc:
        parse_card_file(path)
    msg = str(exc.value)
    assert str(path) in msg and where in msg and f"unknown key {bad!r}" in msg and f"Did you mean {hint!r}" in msg


@pytest.mark.parametrize("body, match", [
    ('native_size = "256"\n[variants.v]\n', r"'native_size' must be an integer, got '256'"),
    ("[variants.v]\ndefault_run = 1\n", r"'default_run' must be true or false"),
    ("size_multiple = true\n[variants.v]\n", r"'size_multiple' must be an integer"),
    ('[variants.v]\n[variants.v.weights]\nsize_bytes = "12"\n', r"\[weights\]: 'size_bytes' must be an integer"),
    ('[variants.v]\n[[variants.v.published]]\nmetric = "rfid"\nvalue = 1.0\n', r"missing 'dataset', 'source'"),
    ('input_range = "[-1, 1]"\n[variants.v]\n', r"input_range '\[-1, 1\]'; expected one of"),
    ('[variants.v]\nentry = "no_colon"\n', r"entry 'no_colon' must be"),
    ('family = "x"\nkind = "vq"\nentry = "a:b"\n', r"declares no variants"),
])
def test_wrong_types_and_shapes_are_errors(tmp_path, body, match):
    text = body if body.startswith("family") else GOOD + body
    with pytest.raises(CardError, match=match):
        parse_card_file(_card(tmp_path, text))


def test_kind_typo_suggests(tmp_path):
    with pytest.raises(CardError, match=r"variant 'v' has kind 'rqv'.*Did you mean 'rvq'"):
        parse_card_file(_card(tmp_path, 'family = "x"\nkind = "rqv"\nentry = "a:b"\n[variants.v]\n'))


def test_every_builtin_card_passes_the_schema():
    for path in sorted(CARDS_DIR.glob("*.toml")):
        assert parse_card_file(path), path
    # the example card as well
    (card,) = parse_card_file(Path(__file__).parents[1] / "examples" / "custom_tokenizer" / "mytok.toml")
    assert card.name == "mytok.v1" and card.params == {"pool": 2, "bits": 4}


def test_cards_option_env_and_dedup(tmp_path, monkeypatch):
    base = set(all_cards())
    a = tmp_path / "a"
    a.mkdir()
    _card(a, 'family = "mine"\nkind = "vq"\nentry = "a.b:C"\n[variants.one]\n[variants.two]\n', "mine.toml")
    b = _card(tmp_path, 'family = "other"\nkind = "codec"\nentry = "a.b:C"\n[variants.v]\n', "other.toml")
    use_cards([a, a / "mine.toml"])  # a folder and a file inside it: the file counts once
    assert set(all_cards()) == base | {"mine.one", "mine.two"}
    monkeypatch.setenv(cards_mod.ENV_VAR, f"{b}{__import__('os').pathsep}")
    assert set(all_cards()) == base | {"mine.one", "mine.two", "other.v"}
    assert get_card("mine").name == "mine.one"
    use_cards([tmp_path / "missing"])
    with pytest.raises(CardError, match="--cards .*missing: not a card file"):
        all_cards()


def test_a_card_shadowing_a_builtin_is_a_clear_error(tmp_path):
    _card(tmp_path, 'family = "jpeg"\nkind = "codec"\nentry = "a.b:C"\n[variants.q50]\n', "myjpeg.toml")
    r = runner.invoke(app, ["ls", "tokenizers", "--cards", str(tmp_path)])
    assert r.exit_code == 2
    msg = " ".join(r.output.split())
    assert "family 'jpeg' is declared twice" in msg and "jpeg.toml" in msg and "myjpeg.toml" in msg
    assert "built-in cards cannot be overridden" in msg
    r = runner.invoke(app, ["info", "jpeg.q50", "--cards", str(tmp_path)])
    assert r.exit_code == 2 and "declared twice" in r.output


def test_entry_point_plugins(tmp_path, monkeypatch):
    """An installed package's ``vtbench.cards`` entry point adds its folder of cards."""
    pkg = tmp_path / "site" / "vtb_plugin_demo"
    (pkg / "cards").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from pathlib import Path\nCARDS = Path(__file__).parent / 'cards'\n"
                                     "BAD = 42\n")
    _card(pkg / "cards", 'family = "plug"\nkind = "vq"\nentry = "a.b:C"\n[variants.v]\n', "plug.toml")
    dist = tmp_path / "site" / "vtb_plugin_demo-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: vtb-plugin-demo\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[vtbench.cards]\ndemo = vtb_plugin_demo:CARDS\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    cards = all_cards()
    assert "plug.v" in cards and cards["plug.v"].card_path.endswith("plug.toml")
    (dist / "entry_points.txt").write_text("[vtbench.cards]\ndemo = vtb_plugin_demo:BAD\n")
    cards_mod._entry_point_paths_on.cache_clear()  # scanned once per search path; this one changed in place
    with pytest.raises(CardError, match=r"entry point 'demo'.*must be a path .* got 42"):
        cards_mod._entry_point_paths()


def test_file_relative_entry_loads_the_adapter_beside_the_card(tmp_path):
    (tmp_path / "adapter.py").write_text("class Thing:\n    value = 7\n")
    (card,) = parse_card_file(_card(tmp_path, 'family = "f"\nkind = "vq"\nentry = "adapter.py:Thing"\n[variants.v]\n'))
    cls = load_entry(card)
    assert cls.value == 7 and load_entry(card) is cls  # loaded once
    assert cls.__module__ in sys.modules
    (card2,) = parse_card_file(_card(tmp_path, 'family = "g"\nkind = "vq"\nentry = "nope.py:Thing"\n'
                                     '[variants.v]\n', "g.toml"))
    with pytest.raises(CardError, match="nope.py does not exist"):
        load_entry(card2)


def test_ls_json_lists_user_cards_with_their_path(tmp_path):
    _card(tmp_path, 'family = "mine"\nkind = "vq"\nentry = "a.b:C"\n[variants.v]\n', "mine.toml")
    r = runner.invoke(app, ["ls", "tokenizers", "mine*", "--json", "--cards", str(tmp_path)])
    assert r.exit_code == 0, r.output
    (row,) = json.loads(r.stdout)
    assert row["name"] == "mine.v" and row["card_path"] == str(tmp_path / "mine.toml")
