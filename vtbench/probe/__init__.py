"""The AR probe (gFID tier B): a fixed class-conditional GPT trained on a tokenizer's codes, then sampled,
decoded and scored (``vtbench probe``; protocol ``metrics/probe.toml``).

- ``model``: the prior (LlamaGen-style GPT, 1D RoPE over the flattened codes, KV cache);
- ``tokens``: the dataset tokenised once and cached, the id-hash train/validation split;
- ``train``: the seeded token stream, AdamW, resumable checkpoints, DDP, validation cross-entropy;
- ``sample``: CFG / temperature / top-k / top-p sampling seeded per sample, GigaTok's CFG search;
- ``settings``: ``ProbeConfig`` and the protocol's settings for a size;
- ``run``: ``run_probe`` tying them together and writing the RunResult.
"""

from vtbench.probe.model import ClassConditionalGPT, GPTConfig, KVCache, build_model
from vtbench.probe.run import run_probe
from vtbench.probe.sample import SamplingSettings, cfg_logits, filter_logits, generate, search_cfg
from vtbench.probe.settings import ProbeConfig
from vtbench.probe.tokens import NoCodesError, TokenSet, split_by_id, tokenise
from vtbench.probe.train import CheckpointMismatch, TokenStream, TrainSettings, shard_slice, train_prior, validation_ce

__all__ = ["CheckpointMismatch", "ClassConditionalGPT", "GPTConfig", "KVCache", "NoCodesError", "ProbeConfig",
           "SamplingSettings", "TokenSet", "TokenStream", "TrainSettings", "build_model", "cfg_logits",
           "filter_logits", "generate", "run_probe", "search_cfg", "shard_slice", "split_by_id", "tokenise",
           "train_prior", "validation_ce"]
