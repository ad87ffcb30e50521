"""Continuous VAE references loaded with diffusers' ``AutoencoderKL`` (SD ft-EMA, SDXL, SD3.5, FLUX).

These are not discrete tokenizers: they are the continuous latents that latent-diffusion models use, measured
under the same protocol as the tokenizers to show what a continuous latent of a given size reconstructs.

- Weights: a local diffusers model folder (``config.json`` + ``diffusion_pytorch_model.safetensors``), resolved by
  ``vtbench.tokenizers.weights.resolve_weights`` (card ``[weights]`` with ``directory = true`` and an optional
  ``subfolder``, e.g. ``vae`` inside a pipeline repository), and loaded with
  ``AutoencoderKL.from_pretrained(folder, local_files_only=True)``: nothing is downloaded at construction.
- Encoding: images in [-1, 1]; the latent is the posterior MODE (its mean, deterministic). The diffusion models'
  ``scaling_factor`` / ``shift_factor`` are not applied (they cancel in a reconstruction round trip).
- Cost: the latent is stored as float16 (``params.latent_bits = 16``; 32 keeps float32) and the bits are
  latent elements x ``latent_bits``; ``tokens_per_image`` is the number of latent positions (h x w), with
  ``meta["token_views"]["scalars"]`` = elements.
- diffusers is an optional dependency: the ``diffusers`` extra (``pip install -e ".[diffusers]"``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch

from vtbench.hashing import sha256sum
from vtbench.tokenizers.base import Tokenizer, TokenizerCard, Tokens
from vtbench.tokenizers.official import from_model_range, to_model_range
from vtbench.tokenizers.weights import MissingWeightsError, resolve_weights

WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


def import_autoencoder_kl() -> Any:
    """diffusers' ``AutoencoderKL`` class, or an ImportError that names the extra to install."""
    from vtbench.extras import require

    return require("diffusers", "diffusers", "the continuous VAE references (vae.*)").AutoencoderKL


class DiffusersVAETokenizer(Tokenizer):
    """A diffusers ``AutoencoderKL`` as a continuous reference row (see the module docstring)."""

    def __init__(self, card: TokenizerCard, vae: torch.nn.Module, device: str | torch.device = "cpu"):
        super().__init__(card, device=device)
        self.vae = vae.to(self.device).eval()
        cfg = vae.config
        self.latent_channels = int(cfg.latent_channels)
        self.downsample = 2 ** (len(cfg.block_out_channels) - 1)
        self.latent_bits = int(card.params.get("latent_bits", 16))
        if self.latent_bits not in (16, 32):
            raise ValueError(f"{card.name}: params.latent_bits must be 16 or 32, got {self.latent_bits}")
        self.weights_file: str | None = None

    @classmethod
    def from_card(cls, card: TokenizerCard, *, weights: str | Path | None = None, trust: bool = False,
                  device: str | torch.device = "cpu") -> "DiffusersVAETokenizer":
        if not card.weights:
            raise ValueError(f"{card.card_path}: {card.name} has no [weights] table")
        folder = resolve_weights(card.weights, weights, name=card.name)  # before the import: absent weights skip
        if not (folder / "config.json").is_file():
            raise MissingWeightsError(f"{card.name}: {folder} has no config.json; expected a diffusers "
                                      f"AutoencoderKL folder (config.json + diffusion_pytorch_model.safetensors)")
        autoencoder_kl = import_autoencoder_kl()
        # low_cpu_mem_usage needs accelerate; say so explicitly instead of letting diffusers warn about it
        low_mem = importlib.util.find_spec("accelerate") is not None
        vae = autoencoder_kl.from_pretrained(str(folder), local_files_only=True, torch_dtype=torch.float32,
                                             low_cpu_mem_usage=low_mem)
        tok = cls(card, vae, device=device)
        tok.weights_path = folder
        wfile = next((folder / f for f in WEIGHT_FILES if (folder / f).is_file()), None)
        if wfile is not None:
            tok.weights_file = wfile.name
            tok.weights_sha256 = sha256sum(wfile)
        return tok

    def to(self, device: str | torch.device) -> "DiffusersVAETokenizer":
        super().to(device)
        self.vae.to(self.device)
        return self

    def tokens_per_image(self, height: int, width: int) -> int:
        return (height // self.downsample) * (width // self.downsample)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> Tokens:
        n, _, height, width = images.shape
        self.check_size(height, width)
        x = to_model_range(images.to(self.device, torch.float32), self.card.input_range)
        z = self.vae.encode(x).latent_dist.mode()
        z = z.to(torch.float16 if self.latent_bits == 16 else torch.float32)
        elements = z[0].numel()
        bits = torch.full((n,), float(elements * self.latent_bits), dtype=torch.float64)
        h, w = z.shape[-2:]
        return Tokens(kind=self.card.kind, bits=bits, tokens_per_image=h * w, latents=z,
                      meta={"token_views": {"scalars": elements}, "latent": "mode",
                            "latent_dtype": str(z.dtype).replace("torch.", "")})

    @torch.no_grad()
    def decode(self, tokens: Tokens) -> torch.Tensor:
        if tokens.latents is None:
            raise ValueError(f"{self.name}: decode needs Tokens.latents")
        z = tokens.latents.to(self.device, torch.float32)
        return from_model_range(self.vae.decode(z).sample, self.card.input_range)

    def provenance(self) -> dict[str, Any]:
        out = super().provenance()
        import diffusers
        cfg = self.vae.config
        out["diffusers"] = {
            "version": diffusers.__version__, "weights_file": self.weights_file,
            "latent_channels": self.latent_channels, "downsample": self.downsample,
            "scaling_factor": cfg.get("scaling_factor"), "shift_factor": cfg.get("shift_factor"),
            "latent": "mode", "latent_bits": self.latent_bits,
        }
        return out


__all__ = ["DiffusersVAETokenizer", "import_autoencoder_kl"]
