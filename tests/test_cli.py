import json

from typer.testing import CliRunner

from vtbench.cli import app

runner = CliRunner()


def test_ls_and_info():
    r = runner.invoke(app, ["ls", "tokenizers", "--json"])
    assert r.exit_code == 0, r.output
    names = {t["name"] for t in json.loads(r.stdout)}
    assert {"jpeg.q50", "identity.none"} <= names
    r = runner.invoke(app, ["info", "jpeg.q50", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["params"]["quality"] == 50
    r = runner.invoke(app, ["ls", "metrics"])
    assert r.exit_code == 0 and "bpp" in r.stdout and "rfid" in r.stdout


def test_ls_says_which_weights_are_here(tmp_path, monkeypatch):
    monkeypatch.setenv("VTBENCH_WEIGHTS", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "vq_ds16_c2i.pt").write_bytes(b"placeholder")  # found by name; not loaded by ls
    r = runner.invoke(app, ["ls", "tokenizers", "--json"])
    assert r.exit_code == 0, r.output
    rows = {t["name"]: t for t in json.loads(r.stdout)}
    assert rows["tiny.vq"]["weights_local"].endswith("tiny_vq.safetensors")  # bundled
    assert rows["llamagen.vq16"]["weights_local"] == str(tmp_path / "vq_ds16_c2i.pt")
    assert rows["llamagen.vq8"]["weights_local"] is None and rows["llamagen.vq8"]["weights_file"] == "vq_ds8_c2i.pt"
    assert rows["jpeg.q50"]["weights_file"] is None


def test_info_unknown_did_you_mean():
    r = runner.invoke(app, ["info", "jpg.q50"])
    assert r.exit_code == 2 and "Did you mean" in r.output and "jpeg.q50" in r.output


def test_run_json(image_folder, tmp_path):
    r = runner.invoke(app, ["run", "-t", "jpeg.q50", "--data", str(image_folder), "--metrics", "psnr,ssim,bpp",
                            "--out", str(tmp_path), "--preprocess", "native", "--json"])
    assert r.exit_code == 0, r.output
    obj = json.loads(r.stdout)
    assert obj["tokenizer"] == "jpeg.q50" and obj["n"] == 8
    assert {"psnr", "ssim", "bpp", "compression_ratio"} <= set(obj["metrics"])
    assert obj["metrics"]["tokens_per_image"] is None and "tokens_per_image" in obj["reasons"]
    assert (tmp_path / "index.html").is_file()


def test_run_wildcard_and_multi_json(image_folder, tmp_path):
    r = runner.invoke(app, ["run", "-t", "webp.q*0", "--data", str(image_folder), "--metrics", "psnr",
                            "--out", str(tmp_path), "--preprocess", "native", "--json", "--limit", "3"])
    assert r.exit_code == 0, r.output
    obj = json.loads(r.stdout)
    assert [x["tokenizer"] for x in obj["runs"]] == ["webp.q10", "webp.q50", "webp.q90"]
    assert all(x["n"] == 3 for x in obj["runs"]) and obj["summary_html"].endswith("index.html")


def test_run_errors_are_clear(image_folder, tmp_path):
    r = runner.invoke(app, ["run", "-t", "jpeg.q51", "--data", str(image_folder), "--out", str(tmp_path)])
    assert r.exit_code == 2 and "jpeg.q50" in r.output
    r = runner.invoke(app, ["run", "-t", "jpeg.q50", "--data", str(tmp_path / "missing"), "--out", str(tmp_path)])
    assert r.exit_code == 1 and "missing" in r.output
    r = runner.invoke(app, ["run", "-t", "jpeg.q50", "--metrics", "psnrr", "--data", str(image_folder),
                            "--out", str(tmp_path)])
    assert r.exit_code == 2 and "psnr" in r.output


def test_task_picks_protocol_and_default_data(tmp_path):
    r = runner.invoke(app, ["run", "--task", "detail", "-t", "jpeg.q50", "--limit", "2", "--metrics", "psnr,detail",
                            "--out", str(tmp_path), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["protocol"] == "detail@1.0" and out["dataset"] == "embedded/detail"
    assert out["metrics"]["detail_band_ratio@0.25-0.5"] > 0 and out["metrics"]["gradient_energy_ratio"] > 0
    r = runner.invoke(app, ["run", "--task", "detail", "--protocol", "reconstruction", "-t", "jpeg.q50"])
    assert r.exit_code == 2 and "not a 'detail' protocol" in r.output
    r = runner.invoke(app, ["run", "--task", "detial", "-t", "jpeg.q50"])
    assert r.exit_code == 2 and "Did you mean 'detail'" in r.output


def test_weights_with_several_tokenizers_is_a_usage_error():
    r = runner.invoke(app, ["run", "-t", "jpeg.q50", "-t", "jpeg.q10", "--weights", "x.pt"])
    assert r.exit_code == 2 and "exactly one --tokenizer" in r.output
