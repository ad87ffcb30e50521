"""A minimal vtbench tokenizer: ``pool x pool`` average pooling, then a uniform scalar quantiser of ``bits`` bits
per channel (``2**bits`` levels k / (2**bits - 1)); decoding repeats each level over its block.

The contract (``vtbench.tokenizers.base.Tokenizer``): ``encode`` takes float (N, 3, H, W) in [0, 1] and returns
``Tokens`` with the exact bits of every image; ``decode`` returns float (N, 3, H, W) in [0, 1];
``tokens_per_image(H, W)`` says how many token positions an image has. The card (``mytok.toml``) supplies the
name, kind, size rule and ``params``; ``from_card`` (inherited) builds the adapter with no weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vtbench.tokenizers.base import Tokenizer, Tokens, code_bits


class PoolQuantTokenizer(Tokenizer):
    """Codes: int64 (N, 3, H / pool, W / pool) in [0, 2**bits), one per channel and block (layout channel, h, w)."""

    @property
    def pool(self) -> int:
        return int(self.card.params["pool"])

    @property
    def levels(self) -> int:
        return 2 ** int(self.card.params["bits"])

    def encode(self, images: torch.Tensor) -> Tokens:
        n, c, h, w = images.shape
        p, top = self.pool, self.levels - 1
        # integer arithmetic on the 8-bit values vtbench feeds in: exact, and rounding halves up on every device
        pixels = images.clamp(0, 1).mul(255).round().to(torch.int64)
        block_sum = F.avg_pool2d(pixels.double(), p).mul(p * p).round().to(torch.int64)  # sums of p*p values
        codes = torch.div(2 * top * block_sum + 255 * p * p, 2 * 255 * p * p, rounding_mode="floor")
        return Tokens(kind="scalar", bits=code_bits(codes[0].numel(), self.levels, n),
                      tokens_per_image=(h // p) * (w // p), codes=codes, layout=("channel", "h", "w"),
                      codebook_size=self.levels)

    def decode(self, tokens: Tokens) -> torch.Tensor:
        x = tokens.codes.double() / (self.levels - 1)
        return x.repeat_interleave(self.pool, dim=-2).repeat_interleave(self.pool, dim=-1).float()

    def tokens_per_image(self, height: int, width: int) -> int:
        return (height // self.pool) * (width // self.pool)
