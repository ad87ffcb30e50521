"""A test tokenizer with a token-count setting and a sampling decoder (tests/test_sweeps_seeds.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vtbench.tokenizers.base import Tokenizer, Tokens, code_bits, per_image_normal


class NoisyPrefixTokenizer(Tokenizer):
    stochastic = True

    def network_evaluations(self) -> int:
        return 2

    @property
    def k(self) -> int:
        return int(self.card.params["num_tokens"])

    def encode(self, images: torch.Tensor) -> Tokens:
        n = images.shape[0]
        pooled = F.adaptive_avg_pool2d(images, 4).flatten(1)  # (N, 48)
        codes = pooled.mul(15).round().long()[:, :self.k]
        return Tokens(kind="vq", bits=code_bits(self.k, 16, n), tokens_per_image=self.k, codes=codes,
                      layout=("t",), codebook_size=16, meta={"size": tuple(images.shape[-2:])})

    def decode(self, tokens: Tokens) -> torch.Tensor:
        n = len(tokens)
        full = torch.full((n, 48), 0.5)
        full[:, :self.k] = tokens.codes.float().cpu() / 15
        h, w = tokens.meta["size"]
        img = F.interpolate(full.view(n, 3, 4, 4), size=(h, w), mode="nearest")
        noise = per_image_normal(tokens, (3, h, w)) * float(self.card.params["noise"])
        return (img + noise).clamp(0, 1).to(self.device)

    def tokens_per_image(self, height: int, width: int) -> int:
        return self.k
