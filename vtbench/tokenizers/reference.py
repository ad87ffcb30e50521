"""Reference "tokenizers" that need nothing downloaded: bounds and classic codecs.

- ``identity``: the upper bound (every metric at its best; bits = raw 24-bit RGB).
- ``resize.xN``: down-sample by N and up-sample back (bicubic, antialiased), the bound of a tokenizer that keeps
  only a low-resolution image; its bits are the raw 8-bit pixels of the small image.
- ``jpeg.qN`` / ``webp.qN``: where a classic codec lands at a given quality; bits are the real encoded sizes.
"""

from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vtbench.tokenizers.base import Tokenizer, Tokens


def _to_uint8_hwc(images: torch.Tensor) -> list[np.ndarray]:
    x = images.detach().clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [np.ascontiguousarray(a) for a in x]


class IdentityTokenizer(Tokenizer):
    """Returns its input. Bits are those of raw 24-bit RGB, so its compression ratio is 1."""

    def encode(self, images: torch.Tensor) -> Tokens:
        n, _, h, w = images.shape
        return Tokens(kind="reference", bits=torch.full((n,), 24.0 * h * w, dtype=torch.float64),
                      tokens_per_image=None, latents=images)

    def decode(self, tokens: Tokens) -> torch.Tensor:
        return tokens.latents

    def tokens_per_image(self, height: int, width: int) -> int | None:
        return None


class ResizeTokenizer(Tokenizer):
    """Down-sample by ``factor`` (antialiased bicubic), quantise to 8 bits, up-sample back (bicubic)."""

    @property
    def factor(self) -> int:
        return int(self.card.params["factor"])

    def encode(self, images: torch.Tensor) -> Tokens:
        n, _, h, w = images.shape
        small = (max(1, round(h / self.factor)), max(1, round(w / self.factor)))
        low = F.interpolate(images, size=small, mode="bicubic", antialias=True, align_corners=False)
        low = low.clamp(0, 1).mul(255).round().div(255)  # the "tokens" are 8-bit pixels
        bits = torch.full((n,), 24.0 * small[0] * small[1], dtype=torch.float64)
        return Tokens(kind="reference", bits=bits, tokens_per_image=None, latents=low, meta={"size": (h, w)})

    def decode(self, tokens: Tokens) -> torch.Tensor:
        h, w = tokens.meta["size"]
        return F.interpolate(tokens.latents, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)

    def tokens_per_image(self, height: int, width: int) -> int | None:
        return None


class _CodecTokenizer(Tokenizer):
    """A PIL codec: ``payload`` holds each image's encoded bytes; bits are their exact length x 8."""

    format: str = ""

    def _save_kwargs(self) -> dict:
        raise NotImplementedError

    def encode(self, images: torch.Tensor) -> Tokens:
        payload = []
        for arr in _to_uint8_hwc(images):
            buf = io.BytesIO()
            Image.fromarray(arr, "RGB").save(buf, format=self.format, **self._save_kwargs())
            payload.append(buf.getvalue())
        bits = torch.tensor([8.0 * len(p) for p in payload], dtype=torch.float64)
        return Tokens(kind="codec", bits=bits, tokens_per_image=None, payload=payload,
                      meta={"size": tuple(images.shape[-2:])})

    def decode(self, tokens: Tokens) -> torch.Tensor:
        arrs = [np.asarray(Image.open(io.BytesIO(p)).convert("RGB")) for p in tokens.payload]
        x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).float().div(255)
        return x.to(self.device)

    def tokens_per_image(self, height: int, width: int) -> int | None:
        return None


class JpegTokenizer(_CodecTokenizer):
    """Baseline JPEG (libjpeg via Pillow), 4:2:0 chroma subsampling, standard tables, no optimisation passes."""

    format = "JPEG"

    def _save_kwargs(self) -> dict:
        p = self.card.params
        return {"quality": int(p["quality"]), "subsampling": p.get("subsampling", "4:2:0"), "optimize": False}


class WebpTokenizer(_CodecTokenizer):
    """Lossy WebP (libwebp via Pillow), method 4 (the library default)."""

    format = "WEBP"

    def _save_kwargs(self) -> dict:
        p = self.card.params
        return {"quality": int(p["quality"]), "method": int(p.get("method", 4)), "lossless": False}
