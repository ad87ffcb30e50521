"""LPIPS: parity with the ``lpips`` package on the same weights, weights resolution (download included), and the
metric contract.

ImageNet backbone weights cannot be downloaded here, so every test uses randomly initialised backbones (seeded)
with the package's bundled v0.1 linear heads, or random non-negative heads where the package is absent. The
download tests replace torchvision's ``WeightsEnum.get_state_dict`` by a fake that writes a random backbone into
torch hub's cache, as the real one writes the downloaded file; nothing here touches the network.
"""

from __future__ import annotations

import functools
import re
import sys
import urllib.error
import warnings
from pathlib import Path

import pytest
import torch
import torchvision

from vtbench.metrics import METRICS, Batch, MetricUnavailable
from vtbench.metrics import lpips as vl
from vtbench.metrics.lpips import NETS, LPIPSMetric, build_lpips, load_weights_file

TOL = 1e-5


def random_backbone_state(net: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """torchvision key layout (``features.<i>.weight``), random init, ``features`` only (the file stays small)."""
    torch.manual_seed(seed)
    model = getattr(torchvision.models, NETS[net].arch)(weights=None)
    return {f"features.{k}": v for k, v in model.features.state_dict().items()}


def random_lin_state(net: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """lpips key layout (``lin<k>.model.1.weight``), non-negative like trained heads."""
    g = torch.Generator().manual_seed(seed)
    return {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) for k, c in enumerate(NETS[net].channels)}


def random_images(n: int, h: int, w: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def isolated_env(monkeypatch, tmp_path):
    """No LPIPS env vars, an empty torch hub and no VTBENCH_WEIGHTS: only what a test places is found."""
    for var in (vl.BACKBONE_ENV, vl.LIN_ENV, "VTBENCH_WEIGHTS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(vl, "_FAILED_DOWNLOADS", {})
    return tmp_path


@pytest.fixture
def alex_files(isolated_env, monkeypatch):
    """Random alex backbone and linear heads saved to files and pointed to by the env vars."""
    backbone = isolated_env / NETS["alex"].backbone_file
    lin = isolated_env / "lin" / "alex.pth"
    lin.parent.mkdir()
    torch.save(random_backbone_state("alex"), backbone)
    torch.save(random_lin_state("alex"), lin)
    monkeypatch.setenv(vl.BACKBONE_ENV, str(backbone))
    monkeypatch.setenv(vl.LIN_ENV, str(lin.parent))  # a folder holding alex.pth also works
    return backbone, lin


# -- parity with the lpips package ----------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)  # building lpips' VGG16 takes seconds: once per (net, seed)
def reference_lpips(net: str, seed: int):
    lpips = pytest.importorskip("lpips", reason="the lpips package is the reference implementation")
    torch.manual_seed(seed)
    with warnings.catch_warnings():  # lpips passes torchvision's deprecated `pretrained=` argument
        warnings.simplefilter("ignore")
        ref = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)  # random trunk, bundled heads
    # lpips names the backbone 'slice<k>.<i>.*' with torchvision's indices <i>: map back to 'features.<i>.*'
    backbone = {re.sub(r"^slice\d+\.", "features.", k): v for k, v in ref.net.state_dict().items()}
    lin = {k: v for k, v in ref.state_dict().items() if k.startswith("lin")}
    return ref, backbone, lin


@pytest.mark.parametrize("net", ["alex", "vgg"])
@pytest.mark.parametrize("size", [(64, 64), (48, 80)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_parity_with_lpips_package(net, size):
    ref, backbone, lin = reference_lpips(net, seed=0)
    ours = build_lpips(net, backbone, lin)
    a = random_images(3, *size, seed=1).float() / 127.5 - 1
    b = random_images(3, *size, seed=2).float() / 127.5 - 1
    near = (a + 0.05 * torch.randn(a.shape, generator=torch.Generator().manual_seed(3))).clamp(-1, 1)
    with torch.no_grad():
        for x, y in ((a, b), (a, near)):
            expected = ref(x, y).flatten()
            got = ours(x, y)
            assert got.shape == (3,)
            assert (got - expected).abs().max().item() < TOL
    with torch.no_grad():
        assert torch.equal(ours(a, a), torch.zeros(3))


def test_bundled_heads_are_found_and_metric_matches_package(isolated_env, monkeypatch):
    ref, backbone, _ = reference_lpips("alex", seed=5)
    path = isolated_env / "backbone.pth"
    torch.save(backbone, path)
    monkeypatch.setenv(vl.BACKBONE_ENV, str(path))  # linear heads: from the installed lpips package
    metric = LPIPSMetric("alex")
    assert metric.weight_files["lin"].endswith("v0.1/alex.pth")
    a, b = random_images(5, 64, 64, seed=6), random_images(5, 64, 64, seed=7)
    got = metric.update(Batch([str(i) for i in range(5)], a, b))["lpips"]
    with torch.no_grad():
        expected = ref(Batch.to_float(a), Batch.to_float(b), normalize=True).flatten()
    assert (got - expected).abs().max().item() < TOL


# -- without the package: files from the env vars -------------------------------------------------------------
def test_metric_loads_weights_from_env_paths(alex_files):
    backbone, lin = alex_files
    metric = LPIPSMetric()  # default net: alex
    import hashlib
    assert metric.weight_files == {"backbone": str(backbone), "lin": str(lin),
                                   "backbone_sha256": hashlib.sha256(backbone.read_bytes()).hexdigest(),
                                   "lin_sha256": hashlib.sha256(lin.read_bytes()).hexdigest(),
                                   "backbone_source": "$VTBENCH_LPIPS_BACKBONE", "backbone_downloaded": False,
                                   "backbone_url": "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
                                   "backbone_matches_torchvision": False}  # random weights, not torchvision's
    a, b = random_images(6, 64, 48, seed=0), random_images(6, 64, 48, seed=1)
    values = metric.update(Batch([str(i) for i in range(6)], a, b))["lpips"]
    assert values.shape == (6,) and torch.isfinite(values).all() and (values > 0).all()
    same = metric.update(Batch([str(i) for i in range(6)], a, a.clone()))["lpips"]
    assert torch.equal(same, torch.zeros(6))
    value = metric.compute()["lpips"]
    assert value.n == 12 and value.higher_is_better is False
    assert value.value == pytest.approx(float(values.double().sum()) / 12, rel=1e-9)
    assert value.extra["net"] == "alex" and value.extra["weights"]["backbone"] == str(backbone)


def test_batch_size_independence_and_state_round_trip(alex_files):
    a, b = random_images(6, 40, 40, seed=2), random_images(6, 40, 40, seed=3)
    whole = LPIPSMetric()
    per_image = whole.update(Batch(list("abcdef"), a, b))["lpips"]
    ones = LPIPSMetric(chunk=1)
    singles = torch.cat([ones.update(Batch([str(i)], a[i:i + 1], b[i:i + 1]))["lpips"] for i in range(6)])
    torch.testing.assert_close(singles, per_image, rtol=1e-5, atol=1e-6)
    assert ones.compute()["lpips"].value == pytest.approx(whole.compute()["lpips"].value, rel=1e-5)

    restored = LPIPSMetric()
    restored.load_state_tensors(whole.state_tensors())
    restored.merge_state(whole.state_tensors())  # same images twice: same mean, twice the count
    assert restored.compute()["lpips"].value == pytest.approx(whole.compute()["lpips"].value, rel=1e-12)
    assert restored.compute()["lpips"].n == 12


def test_weights_found_in_torch_hub_cache(isolated_env, monkeypatch):
    hub = isolated_env / "torch_home" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    torch.save(random_backbone_state("alex"), hub / NETS["alex"].backbone_file)
    lin = isolated_env / "alex.pth"
    torch.save(random_lin_state("alex"), lin)
    monkeypatch.setenv(vl.LIN_ENV, str(lin))
    backbone, found_lin = vl.resolve_lpips_weights("alex")
    assert backbone == hub / "alexnet-owt-7be5be79.pth" and found_lin == lin
    assert LPIPSMetric().weight_files["backbone_source"] == "torch hub cache"


def test_missing_backbone_raises_with_file_and_fix(isolated_env):
    with pytest.raises(MetricUnavailable) as err:
        LPIPSMetric("alex")
    reason = err.value.reason
    assert "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth" in reason  # names the file and its URL
    assert "VTBENCH_OFFLINE=1" in reason  # conftest keeps tests offline: the reason says which switch
    assert str(isolated_env / "torch_home" / "hub" / "checkpoints") in reason  # where it was looked for
    assert "torchvision.models.alexnet(weights='IMAGENET1K_V1')" in reason and vl.BACKBONE_ENV in reason
    with pytest.raises(MetricUnavailable, match="vgg16-397923af.pth"):
        LPIPSMetric("vgg")


def test_missing_explicit_path_is_not_silently_skipped(alex_files, monkeypatch, tmp_path):
    missing = tmp_path / "nowhere" / "alexnet.pth"
    monkeypatch.setenv(vl.BACKBONE_ENV, str(missing))
    with pytest.raises(MetricUnavailable, match=re.escape(str(missing))):
        LPIPSMetric()
    with pytest.raises(MetricUnavailable, match="alex.pth"):
        LPIPSMetric(backbone_path=alex_files[0], lin_path=tmp_path)  # a folder without alex.pth


def test_missing_linear_heads_without_package(alex_files, monkeypatch):
    monkeypatch.delenv(vl.LIN_ENV)
    monkeypatch.setattr(vl, "_lpips_package_dir", lambda: None)
    with pytest.raises(MetricUnavailable) as err:
        LPIPSMetric()
    assert "alex.pth" in err.value.reason and 'pip install -e ".[lpips]"' in err.value.reason
    assert vl.LIN_ENV in err.value.reason


# -- building from state dicts ---------------------------------------------------------------------------------
def test_build_accepts_a_full_torchvision_state_dict():
    torch.manual_seed(0)
    full = torchvision.models.alexnet(weights=None).state_dict()  # classifier.* keys are ignored
    model = build_lpips("alex", full, random_lin_state("alex"))
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert model(x, x.flip(-1)).shape == (2,)
    assert not any(p.requires_grad for p in model.parameters()) and not model.training


def test_build_rejects_states_that_do_not_fit():
    backbone, lin = random_backbone_state("alex"), random_lin_state("alex")
    with pytest.raises(ValueError, match="non-negative"):
        build_lpips("alex", backbone, {k: -v for k, v in lin.items()})
    with pytest.raises(ValueError, match="linear heads"):
        build_lpips("vgg", backbone, lin)  # heads are checked before the backbone
    with pytest.raises(ValueError, match="features"):
        build_lpips("alex", {"conv.weight": torch.zeros(1)}, lin)
    with pytest.raises(ValueError, match="unknown LPIPS net"):
        build_lpips("squeeze", backbone, lin)


def test_weights_file_round_trip(tmp_path):
    lin = random_lin_state("alex")
    torch.save(lin, tmp_path / "alex.pth")
    loaded = load_weights_file(tmp_path / "alex.pth")
    assert loaded.keys() == lin.keys() and all(torch.equal(loaded[k], lin[k]) for k in lin)


def test_registered():
    assert METRICS.get("lpips") is LPIPSMetric
    assert LPIPSMetric.outputs[0].key == "lpips" and LPIPSMetric.outputs[0].higher_is_better is False


# -- downloading the backbone (torchvision's weights API, faked) ----------------------------------------------
def test_backbone_urls_and_hash_prefixes_are_torchvisions():
    for net, spec in NETS.items():
        weights = torchvision.models.get_model_weights(spec.arch)[spec.weights_enum]
        assert spec.url == weights.url, net
        assert re.search(rf"-{spec.sha256_prefix}\.pth$", weights.url), net  # what torch hub's check_hash reads


@pytest.fixture
def online(isolated_env, monkeypatch):
    """Downloads allowed; ``WeightsEnum.get_state_dict`` replaced by a fake that, like the real one, writes the
    file into ``torch.hub.get_dir()/checkpoints`` (here a random alex backbone) and returns its state dict.
    ``calls`` records each (url, kwargs); set ``fail`` to an exception to make the download raise it."""
    for var in ("VTBENCH_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    lin = isolated_env / "lin_alex.pth"  # heads from a file, so the tests do not need the lpips package
    torch.save(random_lin_state("alex", seed=10), lin)
    monkeypatch.setenv(vl.LIN_ENV, str(lin))
    fake = {"calls": [], "fail": None}

    def get_state_dict(self, *args, **kwargs):
        fake["calls"].append((self.url, dict(kwargs)))
        sys.stdout.write(f'Downloading: "{self.url}"\n')  # as torch hub announces it (on stdout)
        if fake["fail"] is not None:
            raise fake["fail"]
        state = random_backbone_state("alex", seed=11)
        target = Path(torch.hub.get_dir()) / "checkpoints" / Path(self.url).name
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, target)
        return state

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", get_state_dict)
    return fake


def test_download_announcement_stays_off_stdout(online, capsys):
    """stdout carries --json; torch hub's "Downloading: ..." line goes to stderr with the logs."""
    vl.LPIPSMetric("alex")
    out, err = capsys.readouterr()
    assert online["calls"] and "Downloading" not in out and "Downloading" in err


def test_download_into_torch_hub_cache_then_lpips_is_computed(online, isolated_env):
    metric = LPIPSMetric("alex")
    url = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"
    assert [c[0] for c in online["calls"]] == [url]
    assert online["calls"][0][1]["weights_only"] is True and online["calls"][0][1]["check_hash"] is True
    cached = isolated_env / "torch_home" / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"  # under $TORCH_HOME
    import hashlib
    w = metric.weight_files
    assert w["backbone"] == str(cached) and w["backbone_source"] == "downloaded" and w["backbone_downloaded"]
    assert w["backbone_sha256"] == hashlib.sha256(cached.read_bytes()).hexdigest() and w["backbone_url"] == url
    a, b = random_images(4, 48, 48, seed=12), random_images(4, 48, 48, seed=13)
    metric.update(Batch(list("abcd"), a, b))
    value = metric.compute()["lpips"]
    assert value.n == 4 and value.value is not None and torch.isfinite(torch.tensor(value.value))
    assert value.extra["weights"]["backbone_downloaded"] is True
    # the same numbers as the downloaded file given by path, and a second metric reads the cache, no new download
    by_path = LPIPSMetric("alex", backbone_path=cached)
    by_path.update(Batch(list("abcd"), a, b))
    assert by_path.compute()["lpips"].value == pytest.approx(value.value, rel=1e-12)
    again = LPIPSMetric("alex")
    assert len(online["calls"]) == 1
    assert again.weight_files["backbone_source"] == "torch hub cache" and not again.weight_files["backbone_downloaded"]


@pytest.mark.parametrize("switch", ["VTBENCH_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_attempts_nothing_and_is_null_with_the_fix(online, isolated_env, monkeypatch, switch):
    monkeypatch.setenv(switch, "1")
    from vtbench.runner import build_metrics
    built, unavailable = build_metrics(["lpips"], torch.device("cpu"), reference_key="k")
    assert online["calls"] == [] and built == {}
    reason = unavailable["lpips"]
    hub = isolated_env / "torch_home" / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    assert f"{switch}=1" in reason and "alexnet-owt-7be5be79.pth" in reason
    assert f"curl -L --create-dirs -o {hub} https://download.pytorch.org/models/alexnet-owt-7be5be79.pth" in reason
    value = LPIPSMetric.unavailable(reason, n=3)["lpips"]
    assert value.value is None and value.reason == reason and not hub.exists()


def test_failed_download_is_null_with_the_reason_and_not_retried(online, isolated_env):
    online["fail"] = urllib.error.URLError("no route to host")
    with pytest.raises(MetricUnavailable) as err:
        LPIPSMetric("alex")
    reason = err.value.reason
    assert "download failed" in reason and "URLError" in reason and "no route to host" in reason
    assert "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth" in reason and vl.BACKBONE_ENV in reason
    with pytest.raises(MetricUnavailable, match="failed earlier in this process"):
        LPIPSMetric("alex")  # another tokenizer in the same run: no second attempt
    assert len(online["calls"]) == 1
    assert not (isolated_env / "torch_home" / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth").exists()


def test_no_download_when_the_linear_heads_are_missing(online, monkeypatch):
    monkeypatch.delenv(vl.LIN_ENV)
    monkeypatch.setattr(vl, "_lpips_package_dir", lambda: None)
    with pytest.raises(MetricUnavailable, match=r'pip install -e "\.\[lpips\]"'):
        LPIPSMetric("alex")
    assert online["calls"] == []


def test_no_download_at_import_or_when_lpips_is_not_selected(online, isolated_env, monkeypatch):
    """Online, empty torch hub: executing the module afresh, looking the metric up and building other metrics
    must not reach any download function (each replaced by one that fails the test)."""
    import importlib.util
    import urllib.request

    def forbidden(*args, **kwargs):
        pytest.fail(f"network touched: {args[:2]}")

    for owner, attr in ((torchvision.models.WeightsEnum, "get_state_dict"), (torch.hub, "load_state_dict_from_url"),
                        (torch.hub, "download_url_to_file"), (urllib.request, "urlopen")):
        monkeypatch.setattr(owner, attr, forbidden)
    spec = importlib.util.spec_from_file_location("_lpips_import_probe", vl.__file__)
    probe = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, probe)  # dataclasses look their module up there
    spec.loader.exec_module(probe)  # the module's top level, run again
    from vtbench.runner import build_metrics
    assert METRICS.get("lpips") is LPIPSMetric
    built, unavailable = build_metrics(["psnr", "ssim"], torch.device("cpu"), reference_key="k")
    assert sorted(built) == ["psnr", "ssim"] and not unavailable
    assert not (isolated_env / "torch_home").exists()
