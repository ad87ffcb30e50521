"""Settings of a probe run resolved from the protocol (``metrics/probe.toml``) and the command line: the size's
model shape, the optimiser and budget, the sampling settings. Every value here is recorded in the result."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vtbench.config import Protocol
from vtbench.probe.model import GPTConfig
from vtbench.probe.sample import SamplingSettings
from vtbench.probe.train import TrainSettings, steps_for_epochs
from vtbench.registry import UnknownNameError, did_you_mean


@dataclass
class ProbeConfig:
    """What ``vtbench probe`` was asked (None: the protocol's value for the size)."""

    tokenizer: str
    data: str | None = None
    size: str | None = None
    val_data: str | None = None         # a separate validation dataset (else a split of --data)
    reference: str | None = None        # dataset spec or reference .npz (else --data)
    resize: str = "clean"               # Inception resize for scoring: "clean" or "tf-bilinear" (ADM's evaluator)
    resolution: int | None = None
    limit: int | None = None
    seed: int = 0
    steps: int | None = None
    epochs: float | None = None
    cfg_scale: float | None = None      # fixes the scale (no search)
    cfg_search: bool | None = None
    samples_per_class: int | None = None
    weights: str | None = None
    trust_checkpoint: bool = False
    device: str = "auto"
    out: Path = Path("results")
    force: bool = False
    progress: bool = True
    protocol: str = "probe"
    stop_after_steps: int | None = None  # tests: simulate an interruption of training


def size_table(protocol: Protocol, size: str) -> dict[str, Any]:
    sizes = protocol.get("sizes") or {}
    if size not in sizes:
        raise UnknownNameError(did_you_mean(size, sorted(sizes), "probe size"))
    return dict(sizes[size])


def model_config(protocol: Protocol, table: dict[str, Any], vocab: int, block: int, classes: int) -> GPTConfig:
    m = protocol.get("model", {})
    return GPTConfig(vocab_size=vocab, block_size=block, num_classes=classes, dim=int(table["dim"]),
                     n_layer=int(table["n_layer"]), n_head=int(table["n_head"]),
                     multiple_of=int(table.get("multiple_of", 256)), rope_base=float(m.get("rope_base", 10000.0)),
                     initializer_range=float(m.get("initializer_range", 0.02)),
                     token_dropout=float(m.get("token_dropout", 0.1)), attn_dropout=float(m.get("attn_dropout", 0.0)),
                     resid_dropout=float(m.get("resid_dropout", 0.1)), ffn_dropout=float(m.get("ffn_dropout", 0.1)),
                     class_dropout=float(m.get("class_dropout", 0.1)))


def train_settings(protocol: Protocol, table: dict[str, Any], cfg: ProbeConfig,
                   n_train: int) -> tuple[TrainSettings, dict[str, Any]]:
    t = {**protocol.get("train", {}), **table.get("train", {})}
    batch = int(t["batch_size"])
    if cfg.steps is not None:
        steps, budget = int(cfg.steps), {"steps": int(cfg.steps), "source": "--steps"}
    elif cfg.epochs is not None:
        steps, budget = steps_for_epochs(cfg.epochs, n_train, batch), {"epochs": cfg.epochs, "source": "--epochs"}
    elif "steps" in table:
        steps, budget = int(table["steps"]), {"steps": int(table["steps"]), "source": "size"}
    elif "epochs" in table:
        steps, budget = (steps_for_epochs(float(table["epochs"]), n_train, batch),
                         {"epochs": float(table["epochs"]), "source": "size"})
    else:
        raise ValueError(f"{protocol.path}: the size has neither 'steps' nor 'epochs'")
    if steps < 1:
        raise ValueError(f"the training budget must be at least one step, got {steps}")
    budget.update(steps=steps, epochs_seen=steps * batch / n_train)
    s = TrainSettings(steps=steps, batch_size=batch, lr=float(t["lr"]), betas=tuple(float(b) for b in t["betas"]),
                      weight_decay=float(t["weight_decay"]), grad_clip=float(t["grad_clip"]),
                      schedule=str(t.get("schedule", "constant")), warmup_steps=int(t.get("warmup_steps", 0)),
                      hflip=bool(t.get("hflip", False)), seed=cfg.seed,
                      checkpoint_every=int(t.get("checkpoint_every", 5000)), log_every=int(t.get("log_every", 100)))
    return s, budget


def sampling_settings(protocol: Protocol, table: dict[str, Any], cfg: ProbeConfig) -> tuple[SamplingSettings, dict]:
    p = {**protocol.get("sampling", {}), **table.get("sampling", {})}
    scale = float(cfg.cfg_scale if cfg.cfg_scale is not None else p["cfg_scale"])
    search = bool(cfg.cfg_search if cfg.cfg_search is not None else (cfg.cfg_scale is None and p.get("cfg_search")))
    s = SamplingSettings(cfg_scale=scale, temperature=float(p["temperature"]), top_k=int(p["top_k"]),
                         top_p=float(p["top_p"]), seed=cfg.seed)
    spc = int(cfg.samples_per_class if cfg.samples_per_class is not None else p["samples_per_class"])
    if spc < 1:
        raise ValueError(f"--samples-per-class must be at least 1, got {spc}")
    extra = {"cfg_search": search, "search_step": float(p.get("cfg_search_step", 0.25)),
             "search_min": float(p.get("cfg_search_min", 1.0)), "samples_per_class": spc,
             "batch_size": int(p.get("batch_size", 32)), "cfg_schedule": p.get("cfg_schedule", "constant")}
    return s, extra
