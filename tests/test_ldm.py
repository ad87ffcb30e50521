"""vtbench's LDM-style encoder/decoder (shared by the taming, LlamaGen, RQ-VAE, VAR and MAR adapters)."""

import torch

from vtbench.tokenizers.ldm import AttnBlock, Decoder, Encoder, attn_levels_from_resolutions


def _small(**kw):
    cfg = dict(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_levels=(2,), z_channels=4)
    cfg.update(kw)
    return cfg


def test_shapes_and_official_names():
    enc, dec = Encoder(**_small(double_z=True)).eval(), Decoder(**_small()).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        z = enc(x)
        assert z.shape == (2, 8, 8, 8)  # 2 downsamplings, double_z
        assert dec(z[:, :4]).shape == (2, 3, 32, 32)
    keys = set(enc.state_dict()) | {"dec." + k for k in dec.state_dict()}
    for k in ("conv_in.weight", "down.0.block.0.norm1.weight", "down.1.block.0.nin_shortcut.weight",
              "down.2.attn.0.q.weight", "down.0.downsample.conv.weight", "mid.attn_1.proj_out.bias",
              "dec.up.0.block.1.conv2.weight", "dec.up.2.attn.1.k.weight", "dec.up.1.upsample.conv.weight",
              "dec.mid.block_2.conv1.weight", "conv_out.weight"):
        assert k in keys, k
    assert "down.2.downsample.conv.weight" not in keys and "dec.up.0.upsample.conv.weight" not in keys
    assert "down.0.block.0.nin_shortcut.weight" not in keys  # equal channels: no shortcut parameters


def test_fused_attention_equals_separate_projections():
    torch.manual_seed(0)
    sep, fused = AttnBlock(32).eval(), AttnBlock(32, fused_qkv=True).eval()
    sd = sep.state_dict()
    fused.load_state_dict({
        "norm.weight": sd["norm.weight"], "norm.bias": sd["norm.bias"],
        "qkv.weight": torch.cat([sd["q.weight"], sd["k.weight"], sd["v.weight"]]),
        "qkv.bias": torch.cat([sd["q.bias"], sd["k.bias"], sd["v.bias"]]),
        "proj_out.weight": sd["proj_out.weight"], "proj_out.bias": sd["proj_out.bias"]})
    x = torch.randn(2, 32, 5, 7)
    with torch.no_grad():
        a, b = sep(x), fused(x)
        # direct single-head attention as a reference: softmax(q k^T / sqrt(C)) v
        y = sep.norm(x)
        q, k, v = (m(y).flatten(2) for m in (sep.q, sep.k, sep.v))
        w = torch.softmax(q.transpose(1, 2) @ k / 32 ** 0.5, dim=-1)
        ref = x + sep.proj_out((v @ w.transpose(1, 2)).view_as(x))
    assert torch.allclose(a, b, atol=1e-6) and torch.allclose(a, ref, atol=1e-5)


def test_attn_levels_from_resolutions():
    assert attn_levels_from_resolutions(256, 5, [16]) == (4,)
    assert attn_levels_from_resolutions(256, 6, [8]) == (5,)
    assert attn_levels_from_resolutions(256, 5, []) == ()
