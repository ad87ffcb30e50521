"""VAT: vtbench's own implementation of the Variational Tokenizer for 3D shapes.

Paper: Zhang, Xiong, Xu, "3D representation in 512-Byte: Variational tokenizer is the key for autoregressive 3D
generation", arXiv:2412.02202. The authors released no code and no weights (sparse-mvs-2/VAT holds a README only),
so this module follows the paper's description; the sizes below are vtbench's (small enough to train on a CPU),
not the paper's. Pipeline, as the paper describes it:

1. Input: ``n_points`` surface points with normals sampled from the mesh; each point is embedded with Fourier
   features of its position (``fourier_freqs`` octaves, sin and cos) plus the raw position and normal.
2. Transformer encoder with ``latent_tokens`` learnable latent tokens. The paper's in-context form
   (``in_context = true``) concatenates them with the point tokens and runs the sequence through ``enc_layers``
   self-attention blocks, keeping only the latent tokens. vtbench's default (``in_context = false``, about ten
   times cheaper on a CPU) lets the latent tokens cross-attend to the point tokens once, then runs the
   self-attention blocks over the latent tokens alone.
3. Gaussian: a linear head gives ``mu`` and ``log sigma^2`` per latent token (``latent_dim`` channels); training
   samples ``z = mu + sigma * eps`` and pays a KL term to N(0, I); encoding uses ``z = mu``.
4. Variational multi-scale residual VQ (VVQ): VAR-style next-scale residual quantisation along the token axis.
   At scale k the residual ``z - f_hat`` is area-pooled to ``scales[k]`` tokens, each replaced by its nearest
   entry of one shared codebook (``codebook_size`` codes in the Gaussian's space; training seeds them from
   the quantiser's inputs and re-seeds unused ones), linearly upsampled back to ``latent_tokens``, refined by
   a per-scale convolution ``phi_k`` (VAR's ``h = (1 - r) h + r conv(h)``, r = ``phi_ratio``) and added to
   ``f_hat``. Token counts grow per scale
   (default 1, 2, 4, ..., 64: 127 tokens). Decoding the first ``s`` scales uses the partial sum
   ``f_hat_s`` (VAR's coarse-to-fine prefix): the rate sweep over ``num_scales``.
5. Triplane decoder: the quantised tokens (plus learned positions) run through ``dec_layers`` self-attention
   blocks; ``3 x triplane_base^2`` learnable plane queries cross-attend to them, and each output token is
   upsampled to a ``k x k`` patch of ``triplane_channels`` features (a linear map, pixel-shuffle style;
   ``k = triplane_res / triplane_base``), giving three feature planes (xy, xz, yz) of side ``triplane_res``.
   The occupancy of a query point is an MLP of its three bilinearly sampled plane features (concatenated) and
   Fourier features of its position (``query_freqs`` octaves).
6. Mesh: occupancy logits on a ``resolution^3`` grid over ``[-bound, bound]^3``, marching cubes (skimage) at
   probability 0.5 (logit 0).

The codec (:class:`VATCodec`) follows :mod:`vtbench.three_d.codecs`: ``encode(shape) -> Encoded`` with integer
codes (scale-major: the ``scales[0]`` codes of scale 0, then scale 1, ...), ``tokens`` = number of codes and
``bits = tokens * log2(codebook_size)`` exactly (the codebook size is a power of two); ``decode(encoded) ->
trimesh.Trimesh``. Deterministic: eval mode, ``z = mu``, input points drawn with a seed derived from the shape id
(:func:`vtbench.three_d.metrics.stream_seed`, stream ``vat-input``). Weights: safetensors whose metadata
``vtbench_vat`` holds the architecture (JSON, read as data) and the training record
(:mod:`vtbench.three_d.vat_train`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vtbench.three_d.codecs import Encoded, ShapeCodec

__all__ = ["VATConfig", "VAT", "VATCodec", "METADATA_KEY", "read_vat_file", "save_vat_file", "shape_input",
           "fourier_features"]

METADATA_KEY = "vtbench_vat"
INPUT_STREAM = "vat-input"


@dataclass(frozen=True)
class VATConfig:
    """The architecture (stored in the weights file's metadata). See the module docstring for each part."""

    n_points: int = 512
    fourier_freqs: int = 6
    width: int = 64
    heads: int = 4
    mlp_ratio: int = 2
    enc_layers: int = 2
    dec_layers: int = 1
    latent_tokens: int = 64
    latent_dim: int = 8
    codebook_size: int = 256
    scales: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    phi_ratio: float = 0.5
    triplane_base: int = 8
    triplane_res: int = 32
    triplane_channels: int = 16
    occ_hidden: int = 64
    query_freqs: int = 4
    bound: float = 0.55
    in_context: bool = False

    def __post_init__(self):
        object.__setattr__(self, "scales", tuple(int(s) for s in self.scales))
        s = self.scales
        if not s or any(b <= a for a, b in zip(s, s[1:])) or s[0] < 1 or s[-1] != self.latent_tokens:
            raise ValueError(f"VAT scales must increase strictly from >= 1 to latent_tokens={self.latent_tokens}, "
                             f"got {list(s)}")
        k = self.codebook_size
        if k < 2 or k & (k - 1):
            raise ValueError(f"VAT codebook_size must be a power of two (exact bits per token), got {k}")
        if self.triplane_res % self.triplane_base:
            raise ValueError(f"VAT triplane_res ({self.triplane_res}) must be a multiple of triplane_base "
                             f"({self.triplane_base})")
        if self.width % self.heads:
            raise ValueError(f"VAT width ({self.width}) must be a multiple of heads ({self.heads})")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "config") -> "VATConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{source}: unknown VAT config keys {unknown}; known: {sorted(known)}")
        return cls(**{k: (tuple(v) if k == "scales" else v) for k, v in d.items()})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["scales"] = list(self.scales)
        return d

    @property
    def bits_per_token(self) -> int:
        return int(math.log2(self.codebook_size))

    def tokens(self, num_scales: int) -> int:
        """Codes in the first ``num_scales`` scales."""
        return int(sum(self.scales[:num_scales]))


# ---------------------------------------------------------------------------------------------- blocks


def fourier_features(x: torch.Tensor, n_freqs: int) -> torch.Tensor:
    """(..., 3) -> (..., 3 + 6 n_freqs): x, sin(2^k pi x), cos(2^k pi x) for k < n_freqs."""
    freqs = (2.0 ** torch.arange(n_freqs, dtype=x.dtype, device=x.device)) * math.pi
    xf = (x[..., None] * freqs).flatten(-2)
    return torch.cat([x, xf.sin(), xf.cos()], dim=-1)


class Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        b, n, w = x.shape
        q = self.q(x).view(b, n, self.heads, -1).transpose(1, 2)
        k, v = self.kv(ctx).view(b, ctx.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.out(y.transpose(1, 2).reshape(b, n, w))


class Block(nn.Module):
    """Pre-norm transformer block: self-attention (``ctx`` None) or cross-attention to ``ctx``, then an MLP."""

    def __init__(self, width: int, heads: int, mlp_ratio: int, cross: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.norm_ctx = nn.LayerNorm(width) if cross else None
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width))

    def forward(self, x: torch.Tensor, ctx: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h if ctx is None else self.norm_ctx(ctx))
        return x + self.mlp(self.norm2(x))


class InContextEncoder(nn.Module):
    """Points with normals (B, N, 6) -> Gaussian parameters (mu, logvar), each (B, latent_tokens, latent_dim).

    ``in_context``: the paper's form, self-attention over the concatenation [latent tokens; point tokens] in every
    block. Otherwise (the default, for CPU cost): the latent tokens cross-attend to the point tokens once, then
    ``enc_layers`` self-attention blocks run over the latent tokens alone."""

    def __init__(self, cfg: VATConfig):
        super().__init__()
        self.cfg = cfg
        self.point_in = nn.Linear(6 + 6 * cfg.fourier_freqs, cfg.width)
        self.latents = nn.Parameter(torch.randn(cfg.latent_tokens, cfg.width) * 0.02)
        self.cross = None if cfg.in_context else Block(cfg.width, cfg.heads, cfg.mlp_ratio, cross=True)
        self.blocks = nn.ModuleList(Block(cfg.width, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.enc_layers))
        self.norm = nn.LayerNorm(cfg.width)
        self.gaussian = nn.Linear(cfg.width, 2 * cfg.latent_dim)

    def forward(self, pts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.point_in(torch.cat([fourier_features(pts[..., :3], self.cfg.fourier_freqs), pts[..., 3:6]],
                                        dim=-1))
        latents = self.latents.expand(pts.shape[0], -1, -1)
        x = torch.cat([latents, feats], dim=1) if self.cross is None else self.cross(latents, feats)
        for blk in self.blocks:
            x = blk(x)
        mu, logvar = self.gaussian(self.norm(x[:, :self.cfg.latent_tokens])).chunk(2, dim=-1)
        return mu, logvar.clamp(-30.0, 20.0)


class MultiScaleVQ(nn.Module):
    """VAR-style next-scale residual quantisation along the token axis with one shared codebook."""

    def __init__(self, cfg: VATConfig):
        super().__init__()
        self.cfg = cfg
        self.codebook = nn.Embedding(cfg.codebook_size, cfg.latent_dim)
        nn.init.normal_(self.codebook.weight)  # the Gaussian latent's space
        self.phis = nn.ModuleList(nn.Conv1d(cfg.latent_dim, cfg.latent_dim, 3, padding=1) for _ in cfg.scales)

    def _down(self, x: torch.Tensor, n: int) -> torch.Tensor:  # (B, L, c) -> (B, n, c), area pooling
        return x if n == x.shape[1] else F.interpolate(x.transpose(1, 2), size=n, mode="area").transpose(1, 2)

    def _up(self, h: torch.Tensor, k: int) -> torch.Tensor:  # (B, n, c) -> phi_k(upsampled) (B, L, c)
        length = self.cfg.latent_tokens
        t = h.transpose(1, 2)
        if t.shape[-1] != length:
            t = F.interpolate(t, size=length, mode="linear", align_corners=False)
        r = self.cfg.phi_ratio
        return (t * (1 - r) + self.phis[k](t) * r).transpose(1, 2)

    def nearest(self, r: torch.Tensor) -> torch.Tensor:
        """Index of the nearest codebook entry (L2) of each vector of ``r`` (..., c)."""
        e = self.codebook.weight
        flat = r.reshape(-1, r.shape[-1])
        d = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ e.t() + e.pow(2).sum(1)[None]
        return d.argmin(1).view(r.shape[:-1])

    def forward(self, z: torch.Tensor, beta: float = 0.25):
        """Training pass: (cumulative f_hat after each scale [S x (B, L, c)], codes per scale, the vectors each
        scale quantised [S x (B, n_k, c)], VQ loss).

        The loss is VAR's: mean over scales of ``beta ||sg(f_hat) - z||^2 + ||f_hat - sg(z)||^2``."""
        target = z.detach()
        f_hat = torch.zeros_like(z)
        cumulative, codes, inputs, loss = [], [], [], z.new_zeros(())
        for k, n in enumerate(self.cfg.scales):
            r = self._down(target - f_hat.detach(), n)
            idx = self.nearest(r)
            f_hat = f_hat + self._up(self.codebook(idx), k)
            loss = loss + beta * F.mse_loss(f_hat.detach(), z) + F.mse_loss(f_hat, target)
            cumulative.append(f_hat)
            codes.append(idx)
            inputs.append(r)
        return cumulative, codes, inputs, loss / len(self.cfg.scales)

    @torch.no_grad()
    def encode(self, z: torch.Tensor, num_scales: int) -> list[torch.Tensor]:
        """Codes of the first ``num_scales`` scales, each (B, scales[k]) int64."""
        f_hat = torch.zeros_like(z)
        codes = []
        for k, n in enumerate(self.cfg.scales[:num_scales]):
            idx = self.nearest(self._down(z - f_hat, n))
            f_hat = f_hat + self._up(self.codebook(idx), k)
            codes.append(idx)
        return codes

    def lookup(self, codes: list[torch.Tensor]) -> torch.Tensor:
        """The partial residual sum ``f_hat`` (B, L, c) of the given scales' codes (a prefix of the scales)."""
        f_hat = 0
        for k, idx in enumerate(codes):
            f_hat = f_hat + self._up(self.codebook(idx), k)
        return f_hat


def plane_query_init(base: int, width: int) -> torch.Tensor:
    """(3 base^2, width) initial plane queries: 2D sin-cos embeddings of each cell's (u, v) position (a spatial
    layout from the first step; small random queries leave the planes nearly constant for hundreds of steps) plus
    a random per-plane offset, seeded by the global torch seed like every other parameter."""
    quarter = width // 4
    freqs = 1.0 / (base ** (torch.arange(quarter, dtype=torch.float32) / max(1, quarter)))
    u = torch.arange(base, dtype=torch.float32)
    uu, vv = torch.meshgrid(u, u, indexing="ij")
    ang_u, ang_v = uu.reshape(-1, 1) * freqs * math.pi, vv.reshape(-1, 1) * freqs * math.pi
    pe = torch.cat([ang_u.sin(), ang_u.cos(), ang_v.sin(), ang_v.cos()], dim=1)        # (b^2, 4 quarter)
    pe = F.pad(pe, (0, width - pe.shape[1]))
    return torch.cat([pe + 0.5 * torch.randn(1, width) for _ in range(3)])


class TriplaneDecoder(nn.Module):
    """Latent tokens (B, L, c) -> triplane (B, 3, C, R, R); ``occupancy(planes, xyz)`` -> logits (B, Q)."""

    def __init__(self, cfg: VATConfig):
        super().__init__()
        self.cfg = cfg
        w, b = cfg.width, cfg.triplane_base
        self.proj_in = nn.Linear(cfg.latent_dim, w)
        self.pos = nn.Parameter(torch.randn(cfg.latent_tokens, w) * 0.02)
        self.blocks = nn.ModuleList(Block(w, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.dec_layers))
        self.plane_queries = nn.Parameter(plane_query_init(b, w))
        self.cross = Block(w, cfg.heads, cfg.mlp_ratio, cross=True)
        # upsampling: each plane token becomes a k x k patch of triplane_channels features (k = res / base)
        self.patch = cfg.triplane_res // b
        self.to_patches = nn.Sequential(nn.LayerNorm(w), nn.Linear(w, cfg.triplane_channels * self.patch ** 2))
        h = cfg.occ_hidden
        self.occ = nn.Sequential(nn.Linear(3 * cfg.triplane_channels + 3 + 6 * cfg.query_freqs, h), nn.SiLU(),
                                 nn.Linear(h, h), nn.SiLU(), nn.Linear(h, 1))

    def forward(self, z_q: torch.Tensor) -> torch.Tensor:
        x = self.proj_in(z_q) + self.pos
        for blk in self.blocks:
            x = blk(x)
        n, b = z_q.shape[0], self.cfg.triplane_base
        q = self.to_patches(self.cross(self.plane_queries.expand(n, -1, -1), x))    # (B, 3 b^2, C k^2)
        c, k = self.cfg.triplane_channels, self.patch
        q = q.view(n, 3, b, b, c, k, k).permute(0, 1, 4, 2, 5, 3, 6)              # (B, 3, C, b, k, b, k)
        return q.reshape(n, 3, c, b * k, b * k)

    _AXES = ((0, 1), (0, 2), (1, 2))  # xy, xz, yz

    def occupancy(self, planes: torch.Tensor, xyz: torch.Tensor) -> torch.Tensor:
        """Occupancy logits (B, Q) at points ``xyz`` (B, Q, 3) in the normalised frame."""
        g = (xyz / self.cfg.bound).clamp(-1, 1)
        feats = []
        for p, (i, j) in enumerate(self._AXES):
            grid = g[..., [i, j]].unsqueeze(2)                              # (B, Q, 1, 2): x -> width, y -> height
            feats.append(F.grid_sample(planes[:, p], grid, mode="bilinear", padding_mode="border",
                                       align_corners=False)[..., 0].transpose(1, 2))   # (B, Q, C)
        feats.append(fourier_features(xyz, self.cfg.query_freqs))
        return self.occ(torch.cat(feats, dim=-1))[..., 0]


class VAT(nn.Module):
    """The variational tokenizer: encoder, Gaussian, multi-scale VQ, triplane occupancy decoder."""

    def __init__(self, cfg: VATConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = InContextEncoder(cfg)
        self.quantizer = MultiScaleVQ(cfg)
        self.decoder = TriplaneDecoder(cfg)

    def forward(self, pts: torch.Tensor, query: torch.Tensor, *, num_scales: torch.Tensor | None = None,
                generator: torch.Generator | None = None, beta: float = 0.25) -> dict[str, torch.Tensor]:
        """Training pass. ``pts`` (B, N, 6) points and normals, ``query`` (B, Q, 3); ``num_scales`` (B,) int:
        decode each shape from its first ``num_scales[b]`` scales (None: all). Returns logits (B, Q), kl, vq, the
        codes (B, sum(scales)) and the vectors the quantiser saw (for dead-code restarts)."""
        mu, logvar = self.encoder(pts)
        eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
        z = mu + (0.5 * logvar).exp() * eps
        cumulative, codes, inputs, vq = self.quantizer(z, beta=beta)
        stack = torch.stack(cumulative)                                        # (S, B, L, c)
        s = torch.full((z.shape[0],), len(cumulative), dtype=torch.long) if num_scales is None else num_scales
        f_hat = stack[s.to(stack.device) - 1, torch.arange(z.shape[0], device=stack.device)]
        z_q = z + (f_hat - z).detach()                                         # straight-through
        logits = self.decoder.occupancy(self.decoder(z_q), query)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1).mean()
        return {"logits": logits, "kl": kl, "vq": vq, "codes": torch.cat(codes, 1),
                "vq_inputs": torch.cat([r.reshape(-1, r.shape[-1]) for r in inputs]).detach()}

    @torch.no_grad()
    def encode(self, pts: torch.Tensor, num_scales: int) -> list[torch.Tensor]:
        mu, _ = self.encoder(pts)
        return self.quantizer.encode(mu, num_scales)

    @torch.no_grad()
    def decode_planes(self, codes: list[torch.Tensor]) -> torch.Tensor:
        return self.decoder(self.quantizer.lookup(codes))


# ---------------------------------------------------------------------------------------------- input


def _estimate_normals(points: np.ndarray, k: int = 16) -> np.ndarray:
    """Unoriented normals of a cloud by local PCA over the ``k`` nearest neighbours (a cloud stored without)."""
    from scipy.spatial import cKDTree

    _, idx = cKDTree(points).query(points, k=min(k, len(points)))
    nb = points[idx] - points[idx].mean(axis=1, keepdims=True)
    _, _, vt = np.linalg.svd(nb, full_matrices=False)
    return vt[:, -1, :]


def shape_input(shape, n_points: int, seed: int) -> np.ndarray:
    """(n_points, 6) float32 points and unit normals of a normalised shape, drawn with ``seed``: area-weighted
    surface samples of a mesh (face normals), or a seeded subset (with replacement when the cloud is smaller) of a
    point cloud (its normals, else local-PCA estimates)."""
    from vtbench.three_d.metrics import sample_surface

    if shape.mesh is not None:
        pts, nrm = sample_surface(shape.mesh, n_points, seed)
    else:
        cloud = np.asarray(shape.points, np.float64)
        if len(cloud) == 0:
            raise ValueError(f"shape {shape.id!r}: an empty point cloud cannot be encoded")
        normals = shape.normals if shape.normals is not None else _estimate_normals(cloud)
        rng = np.random.default_rng(seed)
        idx = rng.choice(len(cloud), size=n_points, replace=len(cloud) < n_points)
        pts, nrm = cloud[idx], np.asarray(normals, np.float64)[idx]
    return np.concatenate([pts, nrm], axis=1).astype(np.float32)


def logits_to_mesh(logits: np.ndarray, bound: float):
    """Marching cubes (skimage) of a (G, G, G) logit grid over [-bound, bound]^3 at logit 0, faces wound outward;
    an empty trimesh when the surface does not cross the grid."""
    import trimesh
    from skimage.measure import marching_cubes

    g = logits.shape[0]
    if not (logits.max() > 0 > logits.min()):
        return trimesh.Trimesh(np.zeros((0, 3)), np.zeros((0, 3), np.int64), process=False)
    verts, faces, _, _ = marching_cubes(logits.astype(np.float32), level=0.0)
    verts = verts.astype(np.float64) * (2 * bound / (g - 1)) - bound
    # skimage winds faces towards increasing values (into the solid): reverse them
    return trimesh.Trimesh(verts, faces[:, ::-1].astype(np.int64), process=True)


# ---------------------------------------------------------------------------------------------- files


def save_vat_file(model: VAT, out: str | Path, record: Mapping[str, Any]) -> Path:
    """fp32 state dict to safetensors; ``{"config": ..., **record}`` as one sorted JSON string (one key, so that
    the same training gives the same bytes)."""
    from safetensors.torch import save_file

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
    meta = {**dict(record), "config": model.cfg.to_dict()}
    save_file(state, str(out), metadata={METADATA_KEY: json.dumps(meta, sort_keys=True)})
    return out


def read_vat_file(path: str | Path) -> tuple[VATConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """(config, state dict, metadata record) of a VAT weights file; errors name the file and the fix."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from vtbench.tokenizers.weights import MissingWeightsError, WeightsMismatchError

    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(f"{path}: VAT weights file not found; train one with `vtbench train-vat OUT_DIR` "
                                  f"or pass the path of the bundled tokenizers/weights/vat.tiny.safetensors")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(METADATA_KEY)
        state = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - a torn or foreign file
        raise WeightsMismatchError(f"{path}: not a readable safetensors file ({type(exc).__name__}: "
                                   f"{str(exc)[:200]}); retrain it with `vtbench train-vat`") from None
    if raw is None:
        raise WeightsMismatchError(f"{path}: no {METADATA_KEY!r} metadata, so the architecture is unknown (not a "
                                   f"file written by vtbench.three_d.vat_train); retrain it with `vtbench train-vat`")
    try:
        meta = json.loads(raw)
        cfg = VATConfig.from_dict(meta["config"], source=f"{path} metadata {METADATA_KEY}.config")
    except (ValueError, KeyError, TypeError) as exc:
        raise WeightsMismatchError(f"{path}: unusable {METADATA_KEY!r} metadata ({exc}); retrain it with "
                                   f"`vtbench train-vat`") from None
    return cfg, state, meta


def load_vat(path: str | Path) -> tuple[VAT, dict[str, Any]]:
    """The model (eval mode) and metadata of a VAT weights file, loaded strictly."""
    from vtbench.tokenizers.weights import load_strict

    cfg, state, meta = read_vat_file(path)
    model = VAT(cfg)
    load_strict(model, state, source=str(path))
    return model.eval(), meta


# ---------------------------------------------------------------------------------------------- codec


class VATCodec(ShapeCodec):
    """VAT as a shape codec: ``encode(shape) -> Encoded`` (codes), ``decode(encoded) -> trimesh.Trimesh``.

    ``num_scales`` (1..len(scales), default all): scales kept, the rate sweep; ``resolution``: marching-cubes grid
    (points per side over [-bound, bound]^3); ``seed``: the input-point seed (per shape: ``stream_seed(seed,
    shape.id, "vat-input")``)."""

    kind = "tokenizer"

    def __init__(self, model: VAT, *, num_scales: int | None = None, resolution: int = 64, seed: int = 0,
                 name: str | None = None, device: str | torch.device = "cpu", meta: Mapping[str, Any] | None = None):
        self.model = model.eval()
        self.cfg = model.cfg
        n = len(self.cfg.scales)
        self.num_scales = n if num_scales is None else int(num_scales)
        if not 1 <= self.num_scales <= n:
            raise ValueError(f"VAT num_scales must be in 1..{n} (the model's scales {list(self.cfg.scales)}), "
                             f"got {num_scales}")
        if not 8 <= int(resolution) <= 512:
            raise ValueError(f"VAT resolution must be in 8..512, got {resolution}")
        self.resolution = int(resolution)
        self.seed = int(seed)
        self.device = torch.device(device)
        self.model.to(self.device)
        self.name = name or f"vat-s{self.num_scales}"
        self.meta = dict(meta or {})
        self.weights_path: Path | None = None
        self.weights_sha256: str | None = None
        self.sha256_matches_card: bool | None = None

    # -- construction
    @classmethod
    def from_file(cls, path: str | Path, **kw) -> "VATCodec":
        from vtbench.hashing import sha256sum

        model, meta = load_vat(path)
        codec = cls(model, meta=meta, **kw)
        codec.weights_path, codec.weights_sha256 = Path(path), sha256sum(path)
        return codec

    CARD_PARAMS = ("num_scales", "resolution", "seed")

    @classmethod
    def from_card(cls, card, weights: str | Path | None = None, trust: bool = False,
                  device: str | torch.device = "cpu") -> "VATCodec":
        """Build from a ``tokenizers/vat.toml`` variant: weights resolved by ``vtbench.tokenizers.weights`` (the
        bundled file, ``--weights``, ``$VTBENCH_WEIGHTS``). ``params``: ``num_scales``, ``resolution``, ``seed``;
        any other key is an architecture field the file's config must equal (``trust`` is unused: safetensors)."""
        from vtbench.tokenizers.weights import WeightsMismatchError, resolve_weights

        if not card.weights:
            raise ValueError(f"{card.card_path}: {card.name} has no [weights] table")
        path = resolve_weights(card.weights, weights, name=card.name)
        params = dict(card.params)
        codec = cls.from_file(path, name=card.name, device=device,
                              **{k: params.pop(k) for k in cls.CARD_PARAMS if k in params})
        file_cfg = codec.cfg.to_dict()
        for key, want in params.items():
            if key not in file_cfg:
                raise ValueError(f"{card.card_path}: {card.name}: unknown VAT param {key!r}; expected "
                                 f"{list(cls.CARD_PARAMS)} or an architecture field {sorted(file_cfg)}")
            if file_cfg[key] != want:
                raise WeightsMismatchError(f"{path}: {key} = {file_cfg[key]!r} in the file but {want!r} in "
                                           f"{card.card_path} ({card.name}); use the checkpoint the card names or "
                                           f"fix the card")
        expected = (card.weights or {}).get("sha256")
        codec.sha256_matches_card = None if not expected else expected == codec.weights_sha256
        return codec

    # -- codec
    @property
    def codebook_size(self) -> int:
        return self.cfg.codebook_size

    @property
    def tokens(self) -> int:
        return self.cfg.tokens(self.num_scales)

    def input_points(self, shape) -> np.ndarray:
        from vtbench.three_d.metrics import stream_seed

        return shape_input(shape, self.cfg.n_points, stream_seed(self.seed, shape.id, INPUT_STREAM))

    @torch.inference_mode()
    def encode(self, shape) -> Encoded:
        pts = torch.from_numpy(self.input_points(shape))[None].to(self.device)
        codes = torch.cat(self.model.encode(pts, self.num_scales), dim=1)[0].cpu().numpy().astype(np.int64)
        bpt = self.cfg.bits_per_token
        return Encoded(self.name, shape.id, codes, bits=len(codes) * bpt, tokens=len(codes),
                       bits_per_token=float(bpt),
                       meta={"num_scales": self.num_scales, "scales": list(self.cfg.scales[:self.num_scales])})

    def _split(self, codes: np.ndarray, shape_id: str) -> list[torch.Tensor]:
        codes = np.asarray(codes)
        if codes.ndim != 1 or not np.issubdtype(codes.dtype, np.integer):
            raise ValueError(f"shape {shape_id!r}: VAT codes must be a 1-D integer array, got {codes.dtype} "
                             f"{codes.shape}")
        totals = np.cumsum(self.cfg.scales).tolist()
        if len(codes) not in totals:
            raise ValueError(f"shape {shape_id!r}: {len(codes)} VAT codes is no prefix of the scales "
                             f"{list(self.cfg.scales)} (valid lengths {totals})")
        if len(codes) and (codes.min() < 0 or codes.max() >= self.cfg.codebook_size):
            raise ValueError(f"shape {shape_id!r}: VAT codes outside [0, {self.cfg.codebook_size})")
        out, pos = [], 0
        for n in self.cfg.scales[:totals.index(len(codes)) + 1]:
            out.append(torch.from_numpy(codes[pos:pos + n].astype(np.int64))[None].to(self.device))
            pos += n
        return out

    @torch.inference_mode()
    def logits_grid(self, codes: list[torch.Tensor], chunk: int = 65536) -> np.ndarray:
        """Occupancy logits on the ``resolution^3`` grid (index order x, y, z) over [-bound, bound]^3."""
        planes = self.model.decode_planes(codes)
        g, bound = self.resolution, self.cfg.bound
        axis = torch.linspace(-bound, bound, g, device=self.device)
        grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
        out = [self.model.decoder.occupancy(planes, grid[i:i + chunk][None])[0] for i in range(0, len(grid), chunk)]
        return torch.cat(out).view(g, g, g).float().cpu().numpy()

    def decode(self, encoded: Encoded):
        codes = self._split(encoded.payload, encoded.shape_id)
        return logits_to_mesh(self.logits_grid(codes), self.cfg.bound)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "family": "vat", "num_scales": self.num_scales,
                "tokens": self.tokens, "bits_per_token": self.cfg.bits_per_token, "resolution": self.resolution,
                "seed": self.seed, "config": self.cfg.to_dict(),
                "weights_path": str(self.weights_path) if self.weights_path else None,
                "weights_sha256": self.weights_sha256, "sha256_matches_card": self.sha256_matches_card}
