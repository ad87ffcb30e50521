"""Training the AR probe: a seeded token stream, AdamW, a fixed budget, resumable checkpoints, DDP.

The global batch of step ``s`` is positions ``[s*B, (s+1)*B)`` of an endless stream of epoch permutations of the
training set (epoch ``e``'s permutation and mirror bits come from a generator seeded by ``(seed, e)``), so the
data order depends on nothing but the seed: not on the number of processes, not on where a run was resumed.
Under ``torchrun`` each rank takes its contiguous share of every global batch and scales its summed loss so
that DDP's gradient average is the gradient of the global batch's mean loss (any world size, uneven shares
included). Only rank 0 writes checkpoints.

A checkpoint holds the model, the optimiser, the step, every rank's RNG state and the fingerprint of every
setting that can move a number; resuming with different settings is refused with the differing keys named.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F

from vtbench.core import fingerprint as core_fingerprint
from vtbench.probe.model import ClassConditionalGPT

log = logging.getLogger("vtbench")

CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_FORMAT = "vtbench-probe-checkpoint/1"


class CheckpointMismatch(RuntimeError):
    """A checkpoint in the run directory was written with different settings."""


@dataclass(frozen=True)
class TrainSettings:
    """The optimiser, schedule and budget (all part of the fingerprint except ``checkpoint_every``/``log_every``)."""

    steps: int
    batch_size: int = 256
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    schedule: str = "constant"    # "constant" | "cosine" (after warmup; cosine decays to 0 at the last step)
    warmup_steps: int = 0
    hflip: bool = False           # train on mirrored images' codes too, chosen per (epoch, image) by the stream
    seed: int = 0
    checkpoint_every: int = 5000
    log_every: int = 100

    def fingerprint_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("checkpoint_every")
        d.pop("log_every")
        d["betas"] = list(self.betas)
        return d


def fingerprint(settings: dict[str, Any]) -> str:
    """The training settings' fingerprint (checkpoints refuse others): ``vtbench.core.fingerprint``."""
    return core_fingerprint(settings)


def steps_for_epochs(epochs: float, n_train: int, batch_size: int) -> int:
    """Steps that show every training image ``epochs`` times: ``ceil(epochs * n_train / batch_size)``."""
    return max(1, math.ceil(epochs * n_train / batch_size))


# -- distributed -----------------------------------------------------------------------------------------------
def dist_context() -> tuple[int, int]:
    """(rank, world size): from torch.distributed when initialised, else 0, 1."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shard_slice(n: int, rank: int, world: int) -> slice:
    """This rank's contiguous share of ``n`` items; the shares of ranks ``0..world-1`` partition ``range(n)``."""
    return slice((n * rank) // world, (n * (rank + 1)) // world)


# -- the data stream -----------------------------------------------------------------------------------------
class TokenStream:
    """Global batches of (image index, mirrored?) pairs, a pure function of (seed, step)."""

    def __init__(self, n: int, batch_size: int, seed: int, hflip: bool):
        if n < 1:
            raise ValueError("the training split is empty")
        self.n, self.batch_size, self.seed, self.hflip = n, batch_size, seed, hflip
        self._epochs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def _epoch(self, e: int) -> tuple[torch.Tensor, torch.Tensor]:
        if e not in self._epochs:
            if len(self._epochs) > 4:
                self._epochs.pop(min(self._epochs))
            g = torch.Generator().manual_seed(_seed64(f"stream:{self.seed}:{e}"))
            perm = torch.randperm(self.n, generator=g)
            flip = torch.randint(0, 2, (self.n,), generator=g) if self.hflip else torch.zeros(self.n, dtype=torch.long)
            self._epochs[e] = (perm, flip)
        return self._epochs[e]

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Image indices and mirror flags (int64 ``(batch_size,)`` each) of global batch ``step``."""
        pos = torch.arange(step * self.batch_size, (step + 1) * self.batch_size)
        epochs, within = pos // self.n, pos % self.n
        idx, flip = torch.empty_like(pos), torch.empty_like(pos)
        for e in epochs.unique().tolist():
            m = epochs == e
            perm, fl = self._epoch(e)
            idx[m], flip[m] = perm[within[m]], fl[within[m]]
        return idx, flip


def _seed64(text: str) -> int:
    return int.from_bytes(hashlib.sha1(text.encode()).digest()[:8], "little") & ((1 << 63) - 1)


# -- optimiser and schedule ------------------------------------------------------------------------------------
def make_optimizer(model: torch.nn.Module, s: TrainSettings, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices and embeddings only (LlamaGen ``train_c2i.py`` ``creat_optimizer``)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": s.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    extra = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(groups, lr=s.lr, betas=tuple(s.betas), **extra)


def lr_at(step: int, s: TrainSettings) -> float:
    if s.warmup_steps and step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    if s.schedule == "constant":
        return s.lr
    if s.schedule == "cosine":
        span = max(1, s.steps - s.warmup_steps)
        return 0.5 * s.lr * (1 + math.cos(math.pi * min(1.0, (step - s.warmup_steps) / span)))
    raise ValueError(f"unknown schedule {s.schedule!r}; expected 'constant' or 'cosine'")


def _autocast(device: torch.device):
    # bf16 autocast on CUDA only: CPU runs stay fp32 (exact resume checks, no slow CPU bf16 kernels)
    return (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
            else torch.autocast("cpu", enabled=False))


# -- checkpoints -----------------------------------------------------------------------------------------------
def _rng_state(device: torch.device) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: checkpoint {vb!r}, now {va!r}")
    return out


def load_checkpoint(path: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint at ``path`` if it belongs to ``settings``; None if there is none; raises
    :class:`CheckpointMismatch` naming the differing settings otherwise."""
    if not path.is_file():
        return None
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a torn or foreign file must not be trusted
        raise CheckpointMismatch(f"{path} is not a readable probe checkpoint ({type(exc).__name__}: {exc}); "
                                 "delete it or pass --force to train from scratch") from None
    if ck.get("format") != CHECKPOINT_FORMAT or ck.get("fingerprint") != fingerprint(settings):
        diffs = _diff(settings, ck.get("settings") or {}) or ["(format or fingerprint)"]
        raise CheckpointMismatch(
            f"{path} was written with different settings, so it cannot be resumed: " + "; ".join(diffs[:8])
            + (f" (+{len(diffs) - 8} more)" if len(diffs) > 8 else "")
            + ". Pass --force to train from scratch, or use another --out")
    return ck


def save_checkpoint(path: Path, **content: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save({"format": CHECKPOINT_FORMAT, **content}, tmp)
    os.replace(tmp, path)


# -- training and validation -----------------------------------------------------------------------------------
def shard_loss(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, world: int,
               global_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss to backpropagate, summed cross-entropy) of one rank's share ``x`` ``(b, T)`` of a global batch of
    ``global_tokens`` codes. DDP averages gradients over ``world`` ranks, so the loss is the share's summed CE
    times ``world / global_tokens``: the average is then the gradient of the global batch's mean CE, whatever
    the shares' sizes."""
    logits = net(x[:, :-1], y)
    loss_sum = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x.reshape(-1), reduction="sum")
    return loss_sum * (world / global_tokens), loss_sum


def train_prior(model: ClassConditionalGPT, codes: torch.Tensor, labels: torch.Tensor, s: TrainSettings,
                run_dir: Path, settings: dict[str, Any], device: torch.device, *,
                flipped: torch.Tensor | None = None, stop_after: int | None = None,
                on_step: Callable[[int, float], None] | None = None) -> dict[str, Any]:
    """Train ``model`` (already on ``device``) on ``codes`` int ``(N, T)`` with class ``labels`` ``(N,)``.

    ``settings`` is the full fingerprint dictionary (model, data, tokenizer, ``s``); a checkpoint in ``run_dir``
    with the same fingerprint is resumed, one with another refused. ``flipped``: codes of the mirrored images
    (needed when ``s.hflip``). ``stop_after``: return after that many steps of this call (tests: interruption).
    Returns ``{"step", "steps", "train_loss", "log"}``; the model ends in eval mode."""
    rank, world = dist_context()
    if s.hflip and flipped is None:
        raise ValueError("hflip training needs the mirrored images' codes")
    path = Path(run_dir) / CHECKPOINT_FILE
    ck = load_checkpoint(path, settings)
    opt = make_optimizer(model, s, device)
    net: torch.nn.Module = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                        else None)
    step, history = 0, []
    if ck is not None:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        step, history = int(ck["step"]), list(ck.get("log", []))
        rngs = ck.get("rng") or []
        if len(rngs) == world:
            _set_rng_state(rngs[rank], device)
        else:
            torch.manual_seed(_seed64(f"dropout:{s.seed}:{rank}:{step}"))
            log.warning("checkpoint written by %d processes, resumed by %d: dropout RNG re-seeded", len(rngs), world)
        log.info("resuming the probe from step %d of %d (%s)", step, s.steps, path)
    else:
        torch.manual_seed(_seed64(f"dropout:{s.seed}:{rank}"))
    stream = TokenStream(codes.shape[0], s.batch_size, s.seed, s.hflip)
    tokens_per_seq = codes.shape[1]
    mine = shard_slice(s.batch_size, rank, world)
    if mine.stop <= mine.start:
        raise ValueError(f"batch size {s.batch_size} is smaller than the {world} processes")
    running, n_run, done_here, last = 0.0, 0, 0, float("nan")

    def save() -> None:
        rng = _rng_state(device)
        if world > 1:
            rngs: list[Any] = [None] * world
            dist.all_gather_object(rngs, rng)
        else:
            rngs = [rng]
        if rank == 0:
            save_checkpoint(path, fingerprint=fingerprint(settings), settings=settings, step=step,
                            model=model.state_dict(), optimizer=opt.state_dict(), rng=rngs, log=history)
        barrier()

    model.train()
    while step < s.steps:
        idx, flip = stream.batch(step)
        idx, flip = idx[mine], flip[mine]
        x = codes[idx] if flipped is None else torch.where(flip.bool()[:, None], flipped[idx], codes[idx])
        x, y = x.long().to(device), labels[idx].to(device)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, s)
        with _autocast(device):
            loss, loss_sum = shard_loss(net, x, y, world, s.batch_size * tokens_per_seq)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if s.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
        opt.step()
        step += 1
        done_here += 1
        mean = loss_sum.detach() / x.numel()
        if world > 1:
            dist.all_reduce(mean)
            mean /= world
        last = float(mean)
        running, n_run = running + last, n_run + 1
        if on_step:
            on_step(step, last)
        if step % s.log_every == 0 or step == s.steps:
            history.append({"step": step, "train_loss": running / n_run, "lr": lr_at(step - 1, s)})
            running, n_run = 0.0, 0
        if step % s.checkpoint_every == 0 or step == s.steps or (stop_after and done_here >= stop_after):
            save()
        if stop_after and done_here >= stop_after:
            break
    model.eval()
    return {"step": step, "steps": s.steps, "train_loss": last if done_here else
            (history[-1]["train_loss"] if history else None), "log": history}


@torch.no_grad()
def validation_ce(model: ClassConditionalGPT, codes: torch.Tensor, labels: torch.Tensor, device: torch.device,
                  batch_size: int = 64) -> tuple[float | None, int]:
    """Mean next-token cross-entropy (nats/token) of the conditional model in eval mode over ``codes`` ``(N, T)``,
    and the number of tokens; with torch.distributed, ranks take shares and the sums are all-reduced."""
    rank, world = dist_context()
    was = model.training
    model.eval()
    part = range(codes.shape[0])[shard_slice(codes.shape[0], rank, world)]
    total = torch.zeros(2, dtype=torch.float64, device=device)
    for i in range(0, len(part), batch_size):
        sel = torch.tensor(part[i:i + batch_size])
        x, y = codes[sel].long().to(device), labels[sel].to(device)
        with _autocast(device):
            logits = model(x[:, :-1], y)
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), x.reshape(-1), reduction="sum")
        total += torch.stack((ce.double(), torch.tensor(float(x.numel()), dtype=torch.float64, device=device)))
    if world > 1:
        dist.all_reduce(total)
    model.train(was)
    n = int(total[1].item())
    return (float(total[0] / total[1]) if n else None), n

