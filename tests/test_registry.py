import pytest

from vtbench.config import all_cards, get_card, list_protocols, load_protocol, parse_card_file
from vtbench.registry import Registry, UnknownNameError, did_you_mean, load_object
from vtbench.tokenizers import list_tokenizers


def test_registry_register_get_and_duplicates():
    reg = Registry("thing")
    reg.register("alpha", 1)

    @reg.register("beta")
    def beta():
        return 2

    assert reg.get("alpha") == 1 and reg.get("beta")() == 2
    with pytest.raises(ValueError, match="already registered"):
        reg.register("alpha", 3)
    with pytest.raises(UnknownNameError, match="Did you mean 'alpha'"):
        reg.get("alpah")


def test_registry_lazy_entries_import_on_first_use():
    reg = Registry("fn")
    reg.register("join", "os.path:join")
    assert reg.get("join")("a", "b") == load_object("os.path:join")("a", "b")
    assert reg.names("j*") == ["join"]


def test_did_you_mean_lists_close_names():
    msg = did_you_mean("jpeg.q5", ["jpeg.q50", "jpeg.q10", "webp.q50"], "tokenizer")
    assert "jpeg.q50" in msg and msg.startswith("unknown tokenizer")


def test_cards_declare_reference_tokenizers():
    names = list_tokenizers()
    for n in ("identity.none", "resize.x4", "jpeg.q50", "webp.q50", "tiny.vq", "tiny.rvq", "tiny.fsq"):
        assert n in names
    assert set(list_tokenizers(default_run=True)) <= set(names)
    assert list_tokenizers("jpeg") == [n for n in names if n.startswith("jpeg.")]
    card = get_card("jpeg.q50")
    assert card.params["quality"] == 50 and card.kind == "codec" and card.reference


def test_unknown_tokenizer_suggests():
    with pytest.raises(UnknownNameError, match="jpeg.q50"):
        get_card("jpg.q50")


def test_bare_family_name_resolves_to_default_variant():
    assert get_card("jpeg").family == "jpeg"


def test_card_validation(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('family = "x"\nkind = "banana"\nentry = "a:b"\n[variants.v]\n')
    with pytest.raises(ValueError, match="kind 'banana'"):
        parse_card_file(bad)
    noentry = tmp_path / "noentry.toml"
    noentry.write_text('family = "x"\nkind = "vq"\n[variants.v]\n')
    with pytest.raises(ValueError, match="no 'entry'"):
        parse_card_file(noentry)
    merged = tmp_path / "m.toml"
    merged.write_text('family = "m"\nkind = "vq"\nentry = "a:b"\n[defaults]\nparams = {a = 1, b = 2}\n'
                      '[variants.v]\nparams = {b = 3}\n')
    (card,) = parse_card_file(merged)
    assert card.name == "m.v" and card.params == {"a": 1, "b": 3}


def test_every_card_loads_and_entries_resolve():
    for card in all_cards().values():
        load_object(card.entry)


def test_protocol_is_versioned():
    assert "reconstruction" in list_protocols()
    p = load_protocol("reconstruction")
    assert p.version and p.task == "reconstruction"
    assert p.get("preprocessing.policy") == "adm-center-crop" and p.get("preprocessing.resolution") == 256
    with pytest.raises(UnknownNameError):
        load_protocol("reconstrution")
