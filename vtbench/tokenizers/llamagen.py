"""LlamaGen's VQ image tokenizers (Sun et al., 2024, FoundationVision/LlamaGen
``tokenizer/tokenizer_image/vq_model.py``): VQ-16 (16x16 codes at 256) and VQ-8 (32x32), 16384 codes of
dimension 8, l2-normalised.

vtbench's own implementation. The network is the VQGAN layout of ``vtbench.tokenizers.taming.VQGAN``
(``ch=128``, two residual blocks per level, single-head attention at the last, lowest-resolution level and in
the middle, ``z_channels=256``, ``1x1`` ``quant_conv`` to 8 channels); the quantiser normalises both the
latents and the codebook to unit length before the nearest-neighbour search, and the decoder receives the
normalised code vectors (the official ``decode_code``).

Official module names differ from taming's; ``remap_state`` renames them:

==================================================  ===========================================
official (``VQModel.state_dict()``)                 vtbench (``ldm.Encoder`` / ``ldm.Decoder``)
==================================================  ===========================================
``encoder.conv_blocks.{i}.res.{j}.*``               ``encoder.down.{i}.block.{j}.*``
``encoder.conv_blocks.{i}.attn.{j}.*``              ``encoder.down.{i}.attn.{j}.*``
``encoder.conv_blocks.{i}.downsample.conv.*``       ``encoder.down.{i}.downsample.conv.*``
``{encoder,decoder}.mid.{0,1,2}.*``                 ``….mid.{block_1,attn_1,block_2}.*``
``decoder.conv_blocks.{k}.{res,attn,upsample}.*``   ``decoder.up.{L-1-k}.{block,attn,upsample}.*``
==================================================  ===========================================

(the decoder's ``conv_blocks`` run from the lowest resolution up, ``up`` is indexed by level). The state dict
also holds ``quantize.codebook_used`` (65536 floats of training statistics), kept as a buffer so the file loads
strictly. Files: ``{"model": state_dict}`` (plus ``optimizer``, ``discriminator``, ``steps``, ``args`` and
possibly ``ema`` in training checkpoints); like the official reconstruction script, ``ema`` is preferred
when present.

Images: RGB in ``[-1, 1]``; codes ``(N, H/f, W/f)`` int64, 14 bits each.

pFID (``neighbour_rule``, ``neighbours``, shared with taming in ``VQGANTokenizer``): each token's set is the
``delta`` entries of the l2-normalised codebook nearest the l2-normalised ``quant_conv`` output, the vectors
ImageFolder's ``latent_perturbation.add_perturbation`` ranks (``Tokens.quantizer_input``, (N, h, w, 8)).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from vtbench.tokenizers.taming import VQGAN, VQGANTokenizer
from vtbench.tokenizers.weights import rename_keys


def _level_rules(n_levels: int) -> list[tuple[str, Any]]:
    last = n_levels - 1
    return [
        (r"^(encoder|decoder)\.mid\.0\.", r"\1.mid.block_1."),
        (r"^(encoder|decoder)\.mid\.1\.", r"\1.mid.attn_1."),
        (r"^(encoder|decoder)\.mid\.2\.", r"\1.mid.block_2."),
        (r"^encoder\.conv_blocks\.(\d+)\.res\.", r"encoder.down.\1.block."),
        (r"^encoder\.conv_blocks\.(\d+)\.", r"encoder.down.\1."),
        (r"^decoder\.conv_blocks\.(\d+)\.res\.", lambda m: f"decoder.up.{last - int(m.group(1))}.block."),
        (r"^decoder\.conv_blocks\.(\d+)\.", lambda m: f"decoder.up.{last - int(m.group(1))}."),
    ]


class LlamaGenVQ(VQGANTokenizer):
    """LlamaGen ``VQModel`` checkpoints (``vq_ds16_c2i.pt``, ``vq_ds8_c2i.pt``, ``vq_ds16_t2i.pt``).

    Card params (the official ``ModelArgs``): ``ch`` (128), ``ch_mult`` (``encoder_ch_mult`` =
    ``decoder_ch_mult``), ``num_res_blocks`` (2), ``z_channels`` (256), ``codebook_size`` (16384),
    ``embed_dim`` (``codebook_embed_dim``, 8), ``l2_norm`` (``codebook_l2_norm``), ``usage_buffer`` (65536 when
    ``codebook_show_usage``, else 0). Attention is at the last level, as in the official code.
    """

    @classmethod
    def build_model(cls, params: Mapping[str, Any]) -> nn.Module:
        ch_mult = [int(m) for m in params["ch_mult"]]
        return VQGAN(ch=int(params.get("ch", 128)), ch_mult=ch_mult,
                     num_res_blocks=int(params.get("num_res_blocks", 2)), attn_levels=(len(ch_mult) - 1,),
                     z_channels=int(params.get("z_channels", 256)), codebook_size=int(params["codebook_size"]),
                     embed_dim=int(params["embed_dim"]), l2_norm=bool(params.get("l2_norm", True)),
                     usage_buffer=int(params.get("usage_buffer", 65536)))

    @classmethod
    def remap_state(cls, state: dict[str, torch.Tensor], params: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        return rename_keys(state, _level_rules(len(params["ch_mult"])))


__all__ = ["LlamaGenVQ"]
