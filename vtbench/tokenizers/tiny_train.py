"""Train a tiny tokenizer (``tokenizers/tiny.toml``) on patches of the embedded photographs.

Reproducible command (what produced the bundled checkpoints)::

    python -m vtbench.tokenizers.tiny_train --kind vq --out tokenizers/weights/tiny_vq.safetensors

Data: random 64x64 crops (with random horizontal flips) of ``data/embedded/photos/*.png``, drawn from a
generator seeded by ``--seed``. Loss: MSE reconstruction in [-1, 1] plus the quantiser loss (VQ/RVQ: codebook +
0.25 x commitment; FSQ: none). Adam, cosine learning-rate decay after a short warm-up. VQ/RVQ codes unused
over the last ``restart_every`` steps are re-seeded from this batch's encoder outputs (residuals for RVQ
depths), which also initialises every codebook from data at step 0; restarts stop at 80% of the steps.
Single process, ``torch.set_num_threads(2)``, deterministic algorithms: same seed, same machine, same bytes.

The architecture comes from the card variant's ``params`` (``tiny.<kind>`` unless ``--variant`` says
otherwise) and is stored, with kind, steps, seed and the final losses, in the safetensors metadata.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from vtbench.paths import DATA_DIR
from vtbench.tokenizers.quantizers import ResidualVQ, VectorQuantizer
from vtbench.tokenizers.tiny import TinyAutoencoder

PHOTOS_DIR = DATA_DIR / "embedded" / "photos"
DEFAULT_STEPS = 2000


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def load_photos(folder: str | Path = PHOTOS_DIR) -> torch.Tensor:
    """All ``*.png`` in ``folder`` (sorted by name) as float (P, 3, H, W) in [0, 1]; sizes must agree."""
    from PIL import Image

    paths = sorted(Path(folder).glob("*.png"))
    if not paths:
        raise FileNotFoundError(f"no *.png images in {folder}; the embedded photographs are needed for training")
    arrays = [np.asarray(Image.open(p).convert("RGB"), dtype=np.uint8) for p in paths]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0


def images_digest(images: torch.Tensor) -> str:
    """sha256 of the training images as uint8 (P, 3, H, W) bytes: identifies the data a checkpoint saw."""
    import hashlib

    return hashlib.sha256((images * 255).round().clamp(0, 255).to(torch.uint8).numpy().tobytes()).hexdigest()


def sample_patches(images: torch.Tensor, batch: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """``batch`` random ``size x size`` crops of ``images`` (P, 3, H, W), half of them flipped horizontally."""
    p, _, h, w = images.shape
    idx = torch.randint(0, p, (batch,), generator=generator)
    ys = torch.randint(0, h - size + 1, (batch,), generator=generator)
    xs = torch.randint(0, w - size + 1, (batch,), generator=generator)
    flip = torch.rand(batch, generator=generator) < 0.5
    out = torch.stack([images[i, :, y:y + size, x:x + size] for i, y, x in zip(idx.tolist(), ys.tolist(), xs.tolist())])
    out[flip] = out[flip].flip(-1)
    return out


def _vector_quantizers(model: TinyAutoencoder) -> list[VectorQuantizer]:
    q = model.quantizer
    if isinstance(q, ResidualVQ):
        return list(q.levels)
    return [q] if isinstance(q, VectorQuantizer) else []


@torch.no_grad()
def restart_dead_codes(model: TinyAutoencoder, x: torch.Tensor, usage: list[torch.Tensor],
                       generator: torch.Generator, optimizer: torch.optim.Optimizer) -> int:
    """Re-seed codes with zero ``usage`` from the encoder outputs of batch ``x``; reset their Adam moments."""
    z = model.encoder(x)
    residual = z
    restarted = 0
    for q, counts in zip(_vector_quantizers(model), usage):
        rows = residual.permute(0, 2, 3, 1).reshape(-1, residual.shape[1])
        n = q.restart_codes(counts == 0, rows, generator)
        if n:
            state = optimizer.state.get(q.codebook, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    state[key][counts == 0] = 0
        restarted += n
        residual = residual - q.lookup(q.encode(residual))  # next depth codes what this one left over
    return restarted


def warmup_cosine_lr(step: int, steps: int, lr: float, warmup: int) -> float:
    """The learning rate at ``step``: linear warm-up over ``warmup`` steps, then cosine decay to 0.1 ``lr`` (the
    schedule of both project-trained checkpoints: tiny.* and vat.tiny)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


@torch.no_grad()
def evaluate_psnr(model: TinyAutoencoder, images: torch.Tensor, batch: int = 8) -> float:
    """Mean per-image PSNR (dB, data range 1) of the model's reconstructions of ``images`` in [0, 1]."""
    model.eval()
    values = []
    for i in range(0, images.shape[0], batch):
        x = images[i:i + batch]
        rec = ((model.decode_codes(model.encode_codes(x * 2 - 1)) + 1) / 2).clamp(0, 1)
        mse = (rec - x).pow(2).flatten(1).mean(1).double()
        values.append(10 * torch.log10(1.0 / mse))
    return float(torch.cat(values).mean())


def card_params(variant: str) -> dict[str, Any]:
    from vtbench.config import get_card

    card = get_card(f"tiny.{variant}")
    return {"kind": card.kind, **card.params}


def train(kind: str, *, out: str | Path | None = None, steps: int = DEFAULT_STEPS, seed: int = 0,
          params: Mapping[str, Any] | None = None, images: torch.Tensor | None = None, batch_size: int = 16,
          patch: int = 64, lr: float = 2e-3, restart_every: int = 25, log_every: int = 100,
          command: str = "") -> dict[str, Any]:
    """Train one tiny autoencoder and (when ``out`` is given) save its state dict as safetensors.

    ``params``: architecture (defaults to the ``tiny.<kind>`` card's); ``images``: float (P, 3, H, W) in
    [0, 1] (defaults to the embedded photographs). Returns a summary dict (losses, PSNR on ``images``, time).
    """
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    try:
        return _train(kind, out=out, steps=steps, seed=seed, params=params, images=images,
                      batch_size=batch_size, patch=patch, lr=lr, restart_every=restart_every,
                      log_every=log_every, command=command)
    finally:  # leave the caller's process as it was
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _train(kind: str, *, out, steps, seed, params, images, batch_size, patch, lr, restart_every, log_every,
           command) -> dict[str, Any]:
    params = dict(params) if params is not None else card_params(kind)
    params["kind"] = kind
    if images is None:
        images = load_photos()
    torch.manual_seed(seed)
    model = TinyAutoencoder(params)
    data_gen = torch.Generator().manual_seed(seed)
    restart_gen = torch.Generator().manual_seed(seed + 1)
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.99))
    vqs = _vector_quantizers(model)
    usage = [torch.zeros(q.codebook_size, dtype=torch.long) for q in vqs]
    n_params = sum(p.numel() for p in model.parameters())
    log(f"tiny_train: kind={kind} params={n_params} steps={steps} seed={seed} batch={batch_size}x{patch}^2 "
        f"images={tuple(images.shape)}")
    t0 = time.time()
    recent_rec, recent_q = [], []
    warmup = min(100, max(1, steps // 10))
    for step in range(steps):
        x = sample_patches(images, batch_size, patch, data_gen) * 2 - 1
        if vqs and step % restart_every == 0 and step <= 0.8 * steps:
            n = restart_dead_codes(model, x, usage, restart_gen, opt)
            if n and step:
                log(f"  step {step}: restarted {n} dead codes")
            usage = [torch.zeros_like(u) for u in usage]
        model.train()
        for g in opt.param_groups:
            g["lr"] = warmup_cosine_lr(step, steps, lr, warmup)
        rec, qloss, codes = model(x)
        rec_loss = F.mse_loss(rec, x)
        loss = rec_loss + qloss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        flat = codes.reshape(-1, len(vqs)) if vqs else None
        for i, u in enumerate(usage):
            u += torch.bincount(flat[:, i], minlength=u.numel())
        recent_rec = (recent_rec + [rec_loss.item()])[-50:]
        recent_q = (recent_q + [qloss.item()])[-50:]
        if log_every and (step + 1) % log_every == 0:
            psnr = 10 * math.log10(4.0 / max(1e-12, sum(recent_rec) / len(recent_rec)))  # range 2
            log(f"  step {step + 1}/{steps}  rec_mse={sum(recent_rec) / len(recent_rec):.5f} "
                f"q_loss={sum(recent_q) / len(recent_q):.5f}  patch_psnr={psnr:.2f} dB  {time.time() - t0:.0f}s")
    seconds = time.time() - t0
    model.eval()
    summary = {
        "kind": kind, "steps": steps, "seed": seed, "batch_size": batch_size, "patch": patch, "lr": lr,
        "final_rec_mse": sum(recent_rec) / max(1, len(recent_rec)),
        "final_q_loss": sum(recent_q) / max(1, len(recent_q)),
        "psnr_train_images": evaluate_psnr(model, images) if images.shape[-1] % 8 == 0 else None,
        "n_params": n_params, "train_seconds": round(seconds, 1), "torch": torch.__version__,
        "data_sha256": images_digest(images), "n_images": int(images.shape[0]),
    }
    log(f"tiny_train: done in {seconds:.0f}s; PSNR on the {images.shape[0]} training images "
        f"{summary['psnr_train_images']:.2f} dB")
    if out is not None:
        # Wall time and the like stay out of the file so that a rerun reproduces it byte for byte.
        save(model, out, {**{k: v for k, v in summary.items() if k != "train_seconds"},
                          "params": params, "command": command})
    return summary


METADATA_KEY = "vtbench_tiny"


def save(model: TinyAutoencoder, out: str | Path, meta: Mapping[str, Any]) -> Path:
    """fp32 state dict to safetensors, ``meta`` as one sorted JSON string under ``METADATA_KEY``.

    One key, because safetensors writes the metadata table in hash-map order: with several keys the same
    training run would give files with different bytes (and sha256).
    """
    from safetensors.torch import save_file

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out), metadata={METADATA_KEY: json.dumps(dict(meta), sort_keys=True)})
    log(f"tiny_train: wrote {out} ({out.stat().st_size} bytes)")
    return out


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The training record ``save`` stored in a tiny checkpoint (kind, steps, seed, losses, params, ...)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        raw = (f.metadata() or {}).get(METADATA_KEY)
    if raw is None:
        raise ValueError(f"{path}: no {METADATA_KEY!r} metadata (not written by vtbench.tokenizers.tiny_train)")
    return json.loads(raw)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vtbench.tokenizers.tiny_train", description=__doc__.split("\n")[0])
    ap.add_argument("--kind", required=True, choices=["vq", "rvq", "fsq"])
    ap.add_argument("--out", required=True, help="output .safetensors path")
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variant", default=None, help="card variant whose params to use (default: --kind)")
    ap.add_argument("--photos", default=str(PHOTOS_DIR), help="folder of training *.png images")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    args = ap.parse_args(argv)
    params = card_params(args.variant or args.kind)
    if params["kind"] != args.kind:
        ap.error(f"card variant tiny.{args.variant} is kind {params['kind']!r}, not {args.kind!r}")
    command = "python -m vtbench.tokenizers.tiny_train " + " ".join(sys.argv[1:] if argv is None else argv)
    summary = train(args.kind, out=args.out, steps=args.steps, seed=args.seed, params=params,
                    images=load_photos(args.photos), batch_size=args.batch_size, lr=args.lr, command=command)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
