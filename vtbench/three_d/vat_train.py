"""Train a VAT (:mod:`vtbench.three_d.vat`) on a shape set plus a procedural shape family; resumable, seeded.

``train_vat(out_dir, shapes_spec="embedded", steps=..., seed=0, ...)`` (CLI: ``vtbench train-vat OUT_DIR``).

Data. Every shape is reduced once to two pools: ``surface_pool`` surface points with face normals (the encoder's
input is drawn from it) and ``query_pool`` occupancy query points with labels -- a third uniform in
[-bound, bound]^3, a third at surface points plus N(0, 0.005^2) noise, a third plus N(0, 0.02^2). Labels: inside
when the absolute generalised winding number is > 0.5 (libigl, as the ``shape@1.0`` IoU), and for a mesh that is
not watertight also within ``shell`` of its surface (an open sheet becomes a thin closed shell). Shapes: those of
``shapes_spec`` (``vtbench.three_d.data.open_shapes``; default the embedded set) and, with probability
``procedural`` per batch slot, shape ``j`` of a procedural family: one to four random primitives (box, sphere,
cylinder, cone, torus; random size, rotation and offset) combined by random unions, differences and intersections
(manifold3d), normalised to the unit cube like the dataset. Procedural shape ``j`` is a function of ``(seed, j)``
alone and the family has ``n_procedural`` members.

Determinism. Everything random in step ``t`` (shape choice, point and query draws, the Gaussian's noise, the
scale dropout) comes from generators seeded by ``(seed, t)``, so a run resumed from a checkpoint repeats the
uninterrupted run exactly (same thread count, same machine): ``checkpoint.pt`` in ``out_dir`` (model, AdamW state,
step, recent losses; loads with ``weights_only=True``) is written every ``checkpoint_every`` steps and at the end.

Loss: occupancy BCE (logits) + ``kl_weight`` x KL(N(mu, sigma) || N(0, I)) (summed over channels, mean over
tokens) + ``vq_weight`` x VAR's quantiser loss (commitment ``beta`` = 0.25). The codebook is initialised from
the quantiser's inputs after the first step, and codes unused over ``restart_every`` steps are re-seeded from the
current inputs until 80% of the steps (without this the codebook collapses to a handful of codes). Scale dropout
(a vtbench choice, not the paper's): with probability ``scale_dropout`` a shape is decoded from its first s
scales, s uniform in 1..S, so prefixes of the code (the ``num_scales`` rate sweep) decode to shapes too. AdamW,
linear warm-up then cosine decay to 10%, gradient clipping at 1. The result is ``out_dir/vat.safetensors``
(config and training record in its metadata; no wall time, so reruns give the same bytes) and
``out_dir/summary.json`` (with wall time).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from vtbench.three_d.vat import VAT, VATConfig, save_vat_file
from vtbench.tokenizers.tiny_train import warmup_cosine_lr

CHECKPOINT = "checkpoint.pt"
LOSS_NAMES = ("loss", "bce", "kl", "vq", "occ_acc")
WEIGHTS = "vat.safetensors"
SUMMARY = "summary.json"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- data


@dataclass
class ShapePools:
    """One shape reduced to what training draws from: surface points+normals (P, 6), queries (Q, 3), labels."""

    id: str
    surface: np.ndarray
    query: np.ndarray
    inside: np.ndarray


def _udf(surface_dense: np.ndarray, query: np.ndarray) -> np.ndarray:
    from scipy.spatial import cKDTree

    return cKDTree(surface_dense).query(query, k=1)[0]


def make_pools(shape_id: str, mesh, watertight: bool, rng: np.random.Generator, *, surface_pool: int,
               query_pool: int, bound: float, shell: float) -> ShapePools:
    """Sample the pools of one normalised mesh (see the module docstring)."""
    import trimesh

    from vtbench.three_d.metrics import occupancy

    seed = int(rng.integers(1 << 62))
    pts, face = trimesh.sample.sample_surface(mesh, surface_pool, seed=seed)
    surface = np.concatenate([pts, mesh.face_normals[face]], axis=1).astype(np.float32)
    third = query_pool // 3
    near, _ = trimesh.sample.sample_surface(mesh, 2 * third, seed=seed + 1)
    near = np.asarray(near) + rng.normal(size=near.shape) * np.repeat([[0.005], [0.02]], third, axis=0)
    uniform = rng.uniform(-bound, bound, size=(query_pool - 2 * third, 3))
    query = np.concatenate([uniform, near]).clip(-bound, bound)
    inside = occupancy(mesh, query)
    if not watertight:
        dense, _ = trimesh.sample.sample_surface(mesh, 100_000, seed=seed + 2)
        inside |= _udf(np.asarray(dense), query) < shell
    return ShapePools(shape_id, surface, query.astype(np.float32), inside)


def _primitive(rng: np.random.Generator):
    from manifold3d import CrossSection, Manifold

    kind = rng.integers(5)
    if kind == 0:
        m = Manifold.cube(tuple(rng.uniform(0.2, 1.0, 3)), center=True)
    elif kind == 1:
        m = Manifold.sphere(float(rng.uniform(0.15, 0.5)), 32)
    elif kind in (2, 3):
        r = float(rng.uniform(0.1, 0.45))
        m = Manifold.cylinder(float(rng.uniform(0.2, 1.0)), r, r if kind == 2 else 0.0, 32, True)
    else:
        big = float(rng.uniform(0.2, 0.4))
        m = Manifold.revolve(CrossSection.circle(float(rng.uniform(0.04, 0.6 * big)), 16).translate((big, 0.0)), 32)
    return m.rotate(tuple(rng.uniform(0, 360, 3))).translate(tuple(rng.uniform(-0.3, 0.3, 3)))


def procedural_mesh(seed: int, index: int):
    """Procedural shape ``index`` of the family of ``seed``: a normalised, watertight trimesh."""
    import trimesh

    from vtbench.three_d.data import get_normalisation

    rng = np.random.default_rng([seed, 7919, index])
    shape = _primitive(rng)
    for _ in range(int(rng.integers(0, 4))):
        other = _primitive(rng)
        op = rng.choice(3, p=[0.5, 0.3, 0.2])
        cand = shape + other if op == 0 else shape - other if op == 1 else shape ^ other
        if not cand.is_empty() and cand.volume() > 0.02 * shape.volume():
            shape = cand
    mesh = shape.to_mesh()
    v = np.asarray(mesh.vert_properties, np.float64)[:, :3]
    v, _, _ = get_normalisation("unit-cube").apply(v)
    return trimesh.Trimesh(v, np.asarray(mesh.tri_verts, np.int64), process=True)


class TrainingData:
    """Pools of the dataset's shapes (built at start) and of procedural shapes (built on first use, cached)."""

    def __init__(self, shapes_spec: str | None, seed: int, cfg: VATConfig, *, procedural: float,
                 n_procedural: int, surface_pool: int = 8192, query_pool: int = 12288, shell: float = 0.01):
        from vtbench.three_d.data import SkippedShape, open_shapes

        self.seed, self.cfg, self.procedural, self.n_procedural = seed, cfg, procedural, n_procedural
        self.kw = dict(surface_pool=surface_pool, query_pool=query_pool, bound=cfg.bound, shell=shell)
        self.fixed: list[ShapePools] = []
        if shapes_spec:
            ds = open_shapes(shapes_spec)
            for i, shape in enumerate(ds):
                if isinstance(shape, SkippedShape) or shape.mesh is None:
                    log(f"vat_train: skipping {getattr(shape, 'id', i)} (no mesh)")
                    continue
                rng = np.random.default_rng([seed, 104729, i])
                self.fixed.append(make_pools(shape.id, shape.mesh, shape.watertight, rng, **self.kw))
            self.dataset = {"id": ds.info.id, "revision": ds.info.revision, "n": len(self.fixed),
                            "ids": [p.id for p in self.fixed]}
        else:
            self.dataset = None
        if not self.fixed and procedural < 1.0:
            raise ValueError("vat_train: no training shapes: give a shapes_spec with meshes or set procedural = 1")
        self._cache: dict[int, ShapePools] = {}

    def proc(self, j: int) -> ShapePools:
        if j not in self._cache:
            rng = np.random.default_rng([self.seed, 15485863, j])
            self._cache[j] = make_pools(f"procedural/{j}", procedural_mesh(self.seed, j), True, rng, **self.kw)
        return self._cache[j]

    def batch(self, step: int, batch_size: int, n_queries: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(points (B, N, 6), queries (B, Q, 3), labels (B, Q)) of step ``step``."""
        rng = np.random.default_rng([self.seed, 31337, step])
        pts, qs, ys = [], [], []
        for _ in range(batch_size):
            use_proc = not self.fixed or rng.random() < self.procedural
            pools = self.proc(int(rng.integers(self.n_procedural))) if use_proc else \
                self.fixed[int(rng.integers(len(self.fixed)))]
            pts.append(pools.surface[rng.integers(len(pools.surface), size=self.cfg.n_points)])
            qi = rng.integers(len(pools.query), size=n_queries)
            qs.append(pools.query[qi])
            ys.append(pools.inside[qi])
        return (torch.from_numpy(np.stack(pts)), torch.from_numpy(np.stack(qs)),
                torch.from_numpy(np.stack(ys).astype(np.float32)))


# ---------------------------------------------------------------------------------------------- training


@torch.no_grad()
def restart_dead_codes(model: VAT, opt: torch.optim.Optimizer, dead: torch.Tensor, vectors: torch.Tensor,
                       seed: int) -> int:
    """Re-seed the ``dead`` codebook rows with random vectors the quantiser saw this step (residuals of every
    scale) and zero their Adam moments; returns how many. At step 0 every code is dead: data initialisation."""
    n = int(dead.sum())
    if n == 0:
        return 0
    g = torch.Generator().manual_seed(seed)
    pick = torch.randint(len(vectors), (n,), generator=g)
    book = model.quantizer.codebook.weight
    book[dead] = vectors[pick] + 0.01 * torch.randn(n, book.shape[1], generator=g)
    state = opt.state.get(book, {})
    for key in ("exp_avg", "exp_avg_sq"):
        if key in state:
            state[key][dead] = 0
    return n


def _step_seed(seed: int, step: int, stream: int) -> int:
    return int(np.random.default_rng([seed, stream, step]).integers(1 << 62))


def train_vat(out_dir: str | Path, shapes_spec: str | None = "embedded", steps: int = 2000, seed: int = 0, *,
              config: VATConfig | Mapping[str, Any] | None = None, batch_size: int = 8, n_queries: int = 2048,
              lr: float = 1e-3, kl_weight: float = 1e-3, vq_weight: float = 1.0, scale_dropout: float = 0.5,
              procedural: float = 0.25, n_procedural: int = 128, checkpoint_every: int = 100, log_every: int = 25,
              restart_every: int = 20, resume: bool = True, stop_after: int | None = None, threads: int | None = 1,
              command: str = "") -> dict[str, Any]:
    """Train a VAT; returns a summary dict (steps done, final losses, seconds, paths).

    ``config``: the architecture (default :class:`VATConfig`); ``resume``: continue from ``out_dir/checkpoint.pt``
    when present (its settings must equal these, else ``ValueError``); ``stop_after``: stop once this many steps
    are done (a checkpoint is written; rerun to continue), to split a run. ``threads``: torch threads for the run
    (restored afterwards); results are reproducible for a fixed thread count.
    """
    old_threads, old_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    if threads:
        torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        return _train(Path(out_dir), shapes_spec, steps, seed, config, batch_size, n_queries, lr, kl_weight,
                      vq_weight, scale_dropout, procedural, n_procedural, checkpoint_every, log_every,
                      restart_every, resume, stop_after, command)
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det)


def _train(out_dir, shapes_spec, steps, seed, config, batch_size, n_queries, lr, kl_weight, vq_weight,
           scale_dropout, procedural, n_procedural, checkpoint_every, log_every, restart_every, resume, stop_after,
           command):
    if steps < 1 or batch_size < 1 or checkpoint_every < 1:
        raise ValueError("train_vat: steps, batch_size and checkpoint_every must be positive")
    cfg = config if isinstance(config, VATConfig) else VATConfig.from_dict(dict(config or {}))
    settings = {"shapes_spec": shapes_spec, "steps": steps, "seed": seed, "batch_size": batch_size,
                "n_queries": n_queries, "lr": lr, "kl_weight": kl_weight, "vq_weight": vq_weight,
                "scale_dropout": scale_dropout, "procedural": procedural, "n_procedural": n_procedural,
                "restart_every": restart_every, "config": cfg.to_dict()}
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / CHECKPOINT

    torch.manual_seed(seed)
    model = VAT(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    start, history, first, seconds, restored_usage = 0, [], [], 0.0, None
    if resume and ckpt_path.is_file():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        saved, now = json.loads(ck["settings"]), json.loads(json.dumps(settings))
        if saved != now:
            diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
            raise ValueError(f"{ckpt_path}: the checkpoint was trained with other settings ({', '.join(diff)}); "
                             f"use another out_dir, the same settings, or resume=False (--no-resume) to start over")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        start, history, seconds = int(ck["step"]), json.loads(ck["history"]), float(ck["seconds"])
        first = json.loads(ck["first"])
        restored_usage = ck["usage"]
        log(f"vat_train: resumed from {ckpt_path} at step {start}/{steps}")
    n_params = sum(p.numel() for p in model.parameters())
    t0 = time.time()
    data = TrainingData(shapes_spec, seed, cfg, procedural=procedural, n_procedural=n_procedural)
    log(f"vat_train: {n_params} parameters, {len(data.fixed)} dataset shapes + procedural p={procedural} "
        f"(family of {n_procedural}); steps={steps} batch={batch_size} queries={n_queries} seed={seed}; "
        f"data ready in {time.time() - t0:.1f}s")

    def save_checkpoint(step: int) -> None:
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                    "history": json.dumps(history), "first": json.dumps(first), "settings": json.dumps(settings),
                    "usage": usage,
                    "seconds": seconds + time.time() - t_run}, tmp)
        tmp.replace(ckpt_path)

    warmup = min(100, max(1, steps // 10))
    usage = torch.zeros(cfg.codebook_size, dtype=torch.long)   # code counts since the last restart
    if restored_usage is not None:
        usage.copy_(restored_usage)

    n_scales = len(cfg.scales)
    end = steps if stop_after is None else min(steps, int(stop_after))
    t_run = time.time()
    model.train()
    for step in range(start, end):
        pts, query, labels = data.batch(step, batch_size, n_queries)
        g = torch.Generator().manual_seed(_step_seed(seed, step, 1))
        drop = torch.rand(batch_size, generator=g) < scale_dropout
        s = torch.where(drop, torch.randint(1, n_scales + 1, (batch_size,), generator=g),
                        torch.full((batch_size,), n_scales))
        for group in opt.param_groups:
            group["lr"] = warmup_cosine_lr(step, steps, lr, warmup)
        out = model(pts, query, num_scales=s, generator=g)
        bce = F.binary_cross_entropy_with_logits(out["logits"], labels)
        loss = bce + kl_weight * out["kl"] + vq_weight * out["vq"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        usage += torch.bincount(out["codes"].reshape(-1), minlength=cfg.codebook_size)
        # codes unused since the last restart are re-seeded from this step's quantiser inputs; after step 0 all
        # of them (the codebook starts from data); none in the last 20% of the steps
        restart = step == 0 or (restart_every and (step + 1) % restart_every == 0 and step + 1 <= 0.8 * steps)
        if restart:
            dead = torch.ones_like(usage, dtype=torch.bool) if step == 0 else usage == 0
            n_dead = restart_dead_codes(model, opt, dead, out["vq_inputs"], _step_seed(seed, step, 2))
            if n_dead and log_every and step:
                log(f"  step {step + 1}: re-seeded {n_dead} unused codes")
            usage.zero_()
        acc = ((out["logits"] > 0).float() == labels).float().mean()
        history.append([round(float(v.detach()), 6) for v in (loss, bce, out["kl"], out["vq"], acc)])
        history = history[-50:]
        if len(first) < 10:
            first.append(history[-1])
        done = step + 1
        if log_every and done % log_every == 0:
            m = np.mean(history[-log_every:], axis=0)
            log(f"  step {done}/{steps}  loss={m[0]:.4f} bce={m[1]:.4f} kl={m[2]:.3f} vq={m[3]:.4f} "
                f"occ_acc={m[4]:.4f}  {seconds + time.time() - t_run:.0f}s")
        if done % checkpoint_every == 0 or done == end:
            save_checkpoint(done)
    seconds += time.time() - t_run
    def means(rows):
        return dict(zip(LOSS_NAMES, (round(float(x), 6) for x in np.mean(rows, axis=0)))) if rows else {}

    final, initial = means(history), means(first)
    summary = {"steps_done": max(start, end), "steps": steps, "finished": max(start, end) >= steps,
               "train_seconds": round(seconds, 1), "final_losses_last50": final, "initial_losses_first10": initial,
               "n_params": n_params,
               "out_dir": str(out_dir), "checkpoint": str(ckpt_path)}
    if summary["finished"]:
        record = {"training": {**settings, "final_losses_last50": final, "n_params": n_params,
                               "dataset": data.dataset, "torch": torch.__version__, "command": command}}
        record["training"].pop("config")
        weights = save_vat_file(model.eval(), out_dir / WEIGHTS, record)
        summary["weights"] = str(weights)
        log(f"vat_train: wrote {weights} ({weights.stat().st_size} bytes) after {seconds:.0f}s of training")
    (out_dir / SUMMARY).write_text(json.dumps(summary, indent=2, sort_keys=True))
    return summary
