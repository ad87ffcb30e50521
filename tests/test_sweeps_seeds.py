"""Rate sweeps (a card's [sweep] table: one tokenizer and one record per setting, `--sweep` runs them all) and
sampling decoders (per-image seeds: exact for a fixed seed, independent of batch size; `--seeds` gives one record
per seed and a summary with mean and spread)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from vtbench.cards import CardError, parse_card_file, use_cards
from vtbench.cli import app
from vtbench.results import load, run_dir
from vtbench.tokenizers.base import Tokens, image_seeds, per_image_normal

CARDS = Path(__file__).parent / "data" / "noisy_tokenizer"


@pytest.fixture(autouse=True)
def _cards():
    use_cards([CARDS])
    yield
    use_cards(None)


def test_sweep_expands_into_one_card_per_setting():
    cards = {c.name: c for c in parse_card_file(CARDS / "noisy.toml")}
    assert sorted(cards) == ["noisy.p48", "noisy.p48-k24", "noisy.p48-k48", "noisy.p48-k6"]
    assert cards["noisy.p48"].sweep_settings == ["noisy.p48-k6", "noisy.p48-k24", "noisy.p48-k48"]
    k6 = cards["noisy.p48-k6"]
    assert k6.params["num_tokens"] == 6 and k6.sweep == {"group": "noisy.p48", "param": "num_tokens", "value": 6,
                                                        "label": "k"}
    assert k6.sweep_group == "noisy.p48" and cards["noisy.p48"].sweep_group == "noisy.p48"
    assert [p["value"] for p in cards["noisy.p48-k24"].published] == [10.0] and not k6.published


@pytest.mark.parametrize("sweep,error", [("{ param = 'k' }", "needs 'param'"),
                                         ("{ param = 'k', values = [1, 1] }", "repeat"),
                                         ("{ param = 'k', values = [1], lable = 'k' }", "label")])
def test_bad_sweeps_are_refused(tmp_path, sweep, error):
    card = tmp_path / "bad.toml"
    card.write_text(f'family = "bad"\nkind = "vq"\nentry = "x.py:X"\n[variants.a]\nsweep = {sweep}\n')
    with pytest.raises(CardError, match=error):
        parse_card_file(card)


def _run(tmp_path, *args):
    r = CliRunner().invoke(app, ["run", "--cards", str(CARDS), "--data", "embedded/photos", "--limit", "3",
                                 "--metrics", "psnr,compression", "--out", str(tmp_path), "--json", *args])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_sweep_runs_every_setting_with_one_record_each(tmp_path):
    out = _run(tmp_path, "-t", "noisy.p48", "--sweep")
    runs = {r["tokenizer"]: r for r in out["runs"]}
    assert sorted(runs) == ["noisy.p48-k24", "noisy.p48-k48", "noisy.p48-k6"]
    df = load(tmp_path)
    bits = df[df.metric == "bits_per_image"].set_index("tokenizer")["value"]
    assert bits.to_dict() == {"noisy.p48-k6": 24.0, "noisy.p48-k24": 96.0, "noisy.p48-k48": 192.0}
    psnr = df[df.metric == "psnr"].set_index("tokenizer")["value"]
    assert psnr["noisy.p48-k48"] > psnr["noisy.p48-k6"]  # more tokens, better reconstruction


def test_sweep_flag_on_a_plain_tokenizer_is_an_error(tmp_path):
    r = CliRunner().invoke(app, ["run", "--cards", str(CARDS), "-t", "jpeg.q50", "--sweep", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "names no rate sweep" in r.output


def test_per_image_noise_is_seeded_by_id_not_by_batch():
    t = Tokens(kind="vq", bits=torch.zeros(3), tokens_per_image=1, seeds=image_seeds(["a", "b", "c"], 7))
    whole = per_image_normal(t, (2, 2))
    t2 = Tokens(kind="vq", bits=torch.zeros(1), tokens_per_image=1, seeds=image_seeds(["b"], 7))
    assert torch.equal(per_image_normal(t2, (2, 2))[0], whole[1])
    t3 = Tokens(kind="vq", bits=torch.zeros(1), tokens_per_image=1, seeds=image_seeds(["b"], 8))
    assert not torch.equal(per_image_normal(t3, (2, 2))[0], whole[1])
    assert not torch.equal(per_image_normal(t, (2, 2), stream=1), whole)


def test_sampling_decoder_is_exact_for_a_seed_and_batch_independent(tmp_path):
    a = _run(tmp_path / "a", "-t", "noisy.p48-k48", "--batch-size", "1")
    b = _run(tmp_path / "b", "-t", "noisy.p48-k48", "--batch-size", "3")
    c = _run(tmp_path / "c", "-t", "noisy.p48-k48", "--seed", "1")
    assert a["metrics"]["psnr"] == b["metrics"]["psnr"]
    assert c["metrics"]["psnr"] != a["metrics"]["psnr"]
    rec = json.loads(Path(a["result"]).read_text())
    assert rec["run"]["sampling"]["seed"] == 0 and rec["run"]["sampling"]["network_evaluations_per_image"] == 2


def test_seeds_give_one_record_per_seed_and_a_summary(tmp_path):
    out = _run(tmp_path, "-t", "noisy.p48-k48", "--seeds", "0,1,2")
    folder = Path(out["result"]).parent
    per_seed = [json.loads((folder / f"seed-{s}" / "result.json").read_text())["metrics"]["psnr"]["value"]
                for s in (0, 1, 2)]
    assert len(set(per_seed)) == 3
    summary = json.loads((folder / "result.json").read_text())
    psnr = summary["metrics"]["psnr"]
    assert psnr["value"] == pytest.approx(statistics.fmean(per_seed))
    assert psnr["extra"]["std"] == pytest.approx(statistics.stdev(per_seed))
    assert psnr["extra"]["per_seed"] == per_seed and summary["run"]["seeds"] == [0, 1, 2]
    assert len(load(tmp_path)[lambda d: d.metric == "psnr"]) == 1  # leaderboards read only the summary
    plain = _run(tmp_path / "plain", "-t", "noisy.p48-k48")  # the seed-0 record equals a plain run at --seed 0
    assert plain["metrics"]["psnr"] == per_seed[0]
    assert folder == run_dir(tmp_path, {"id": "embedded/photos", "kind": "embedded"}, "noisy.p48-k48",
                             "reconstruction")


def test_seeds_on_a_deterministic_tokenizer_run_once(tmp_path):
    out = _run(tmp_path, "-t", "jpeg.q50", "--seeds", "0,1")
    assert not list(Path(out["result"]).parent.glob("seed-*"))


def test_a_sweep_is_one_curve_on_the_leaderboard(tmp_path):
    from vtbench.leaderboard.view import Entry, build_sections
    from vtbench.results import iter_records
    _run(tmp_path, "-t", "noisy.p48", "--sweep")
    _run(tmp_path, "-t", "jpeg.q50")
    sections = build_sections([Entry(p, r) for p, r in iter_records(tmp_path)])
    series = {s.label: s for s in sections[0].series}
    assert sorted(series) == ["jpeg.q50", "noisy.p48 (k sweep)"]
    sweep = series["noisy.p48 (k sweep)"]
    assert [p.tokens for p in sweep.points] == [6, 24, 48]  # ordered by bpp, which follows k
