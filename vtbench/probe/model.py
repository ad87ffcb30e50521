"""The AR probe's prior: a class-conditional GPT in the style of LlamaGen (``autoregressive/models/gpt.py``).

Sequence: ``[class token, c_0, c_1, ..., c_{T-1}]`` where ``c`` are a tokenizer's integer codes flattened in
their layout order (``(h, w)`` row-major, ``(h, w, depth)`` for RVQ stacks, VAR's 680 scale tokens, a 1D
tokenizer's ``(tokens,)``); the logits at position ``i`` predict ``c_i``. Positions use 1D RoPE over the whole
sequence (class token at 0), a vtbench choice so one model serves every layout (LlamaGen uses 2D RoPE on square
grids, GigaTok's 1D GPT learned absolute positions).

Blocks as LlamaGen: pre-norm RMSNorm, multi-head attention without biases, SwiGLU feed-forward with hidden size
``find_multiple(int(2 * 4 * dim / 3), multiple_of)``, token / residual / FFN dropout, class dropout to a null
class (index ``num_classes``) for classifier-free guidance, N(0, 0.02) init and a zero-initialised output layer.
A :class:`KVCache` makes sampling cost O(T) forward steps of one token.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def find_multiple(n: int, k: int) -> int:
    return n if n % k == 0 else n + k - n % k


@dataclass(frozen=True)
class GPTConfig:
    """Everything that defines the prior's architecture (part of the probe's fingerprint)."""

    vocab_size: int            # the tokenizer's codebook size
    block_size: int            # image tokens per sequence (T)
    num_classes: int           # the null class for CFG is ``num_classes``
    dim: int = 768
    n_layer: int = 12
    n_head: int = 12
    multiple_of: int = 256     # SwiGLU hidden size rounding
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    initializer_range: float = 0.02
    token_dropout: float = 0.1
    attn_dropout: float = 0.0
    resid_dropout: float = 0.1
    ffn_dropout: float = 0.1
    class_dropout: float = 0.1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def rope_tables(length: int, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape ``(length, head_dim // 2)`` for positions ``0 .. length-1``."""
    inv = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64)[: head_dim // 2] / head_dim))
    ang = torch.outer(torch.arange(length, dtype=torch.float64), inv)
    return ang.cos().float(), ang.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs of ``x`` (B, H, L, D) by the angles of its L positions (``cos``/``sin``: (L, D/2))."""
    xf = x.float().reshape(*x.shape[:-1], -1, 2)
    a, b = xf[..., 0], xf[..., 1]
    out = torch.stack((a * cos - b * sin, b * cos + a * sin), dim=-1)
    return out.flatten(-2).type_as(x)


class KVCache:
    """Keys and values of every layer for ``batch`` sequences, filled left to right during sampling.

    Each layer's buffer of ``capacity`` positions is allocated on its first write (shape, dtype and device from the
    first keys) and filled in place, so a step costs O(1) copying instead of re-concatenating the whole prefix."""

    def __init__(self, n_layer: int, capacity: int):
        self.capacity = capacity
        self.k: list[torch.Tensor | None] = [None] * n_layer
        self.v: list[torch.Tensor | None] = [None] * n_layer
        self.filled = [0] * n_layer  # positions written per layer
        self.length = 0  # positions already written (all layers)

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        start, n = self.filled[layer], k.shape[2]
        if start + n > self.capacity:
            raise ValueError(f"KV cache of {self.capacity} positions cannot take {start + n}")
        if self.k[layer] is None:
            shape = (*k.shape[:2], self.capacity, k.shape[3])
            self.k[layer] = k.new_empty(shape)
            self.v[layer] = v.new_empty(shape)
        self.k[layer][:, :, start:start + n] = k
        self.v[layer][:, :, start:start + n] = v
        self.filled[layer] = start + n
        return self.k[layer][:, :, :start + n], self.v[layer][:, :, :start + n]


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        if cfg.dim % cfg.n_head:
            raise ValueError(f"dim {cfg.dim} is not divisible by n_head {cfg.n_head}")
        self.n_head, self.head_dim, self.dim = cfg.n_head, cfg.head_dim, cfg.dim
        self.wqkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=False)
        self.wo = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.attn_dropout = cfg.attn_dropout
        self.resid_dropout = nn.Dropout(cfg.resid_dropout)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.wqkv(x).view(b, n, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.append(layer, k, v)
        # a cached step (n == 1) attends to every earlier position; a full pass is causal
        causal = cache is None or n > 1
        if cache is not None and n > 1 and k.shape[2] != n:
            raise ValueError("a cached forward of several positions must start from an empty cache")
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal,
                                             dropout_p=self.attn_dropout if self.training else 0.0)
        return self.resid_dropout(self.wo(out.transpose(1, 2).reshape(b, n, self.dim)))


class FeedForward(nn.Module):
    """SwiGLU: ``w2(silu(w1 x) * w3 x)``."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        hidden = find_multiple(int(2 * 4 * cfg.dim / 3), cfg.multiple_of)
        self.w1 = nn.Linear(cfg.dim, hidden, bias=False)
        self.w3 = nn.Linear(cfg.dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, cfg.dim, bias=False)
        self.dropout = nn.Dropout(cfg.ffn_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attention = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.feed_forward = FeedForward(cfg)

    def forward(self, x, cos, sin, cache=None, layer=0):
        h = x + self.attention(self.attention_norm(x), cos, sin, cache, layer)
        return h + self.feed_forward(self.ffn_norm(h))


class ClassConditionalGPT(nn.Module):
    """``forward(codes, labels)``: codes int64 ``(B, L)`` with ``0 <= L < T`` (the known prefix), labels int64
    ``(B,)`` in ``[0, num_classes]`` (``num_classes`` = the null class) -> logits float32 ``(B, L+1, V)``, where
    ``logits[:, i]`` is the distribution of code ``i``. In training mode labels are replaced by the null class
    with probability ``class_dropout`` (LlamaGen's ``LabelEmbedder.token_drop``)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.cls_embedding = nn.Embedding(cfg.num_classes + 1, cfg.dim)  # + the null class
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.tok_dropout = nn.Dropout(cfg.token_dropout)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        cos, sin = rope_tables(cfg.block_size, cfg.head_dim, cfg.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        nn.init.zeros_(self.output.weight)  # LlamaGen gpt.py: the first logits are uniform

    def _init_weights(self, m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=self.cfg.initializer_range)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    @property
    def null_class(self) -> int:
        return self.cfg.num_classes

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _class_tokens(self, labels: torch.Tensor) -> torch.Tensor:
        if self.training and self.cfg.class_dropout > 0:
            drop = torch.rand(labels.shape[0], device=labels.device) < self.cfg.class_dropout
            labels = torch.where(drop, torch.full_like(labels, self.null_class), labels)
        return self.cls_embedding(labels).unsqueeze(1)

    def _run(self, h: torch.Tensor, start: int, cache: KVCache | None) -> torch.Tensor:
        n = h.shape[1]
        if start + n > self.cfg.block_size:
            raise ValueError(f"sequence of {start + n} positions exceeds block_size {self.cfg.block_size}")
        cos, sin = self.rope_cos[start:start + n], self.rope_sin[start:start + n]
        for i, layer in enumerate(self.layers):
            h = layer(h, cos, sin, cache, i)
        if cache is not None:
            cache.length = start + n
        return self.output(self.norm(h)).float()

    def forward(self, codes: torch.Tensor, labels: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        h = self._class_tokens(labels)
        if codes.shape[1]:
            h = torch.cat((h, self.tok_embeddings(codes)), dim=1)
        return self._run(self.tok_dropout(h), 0, cache)

    def step(self, codes: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Logits ``(B, V)`` after appending ``codes`` ``(B,)`` to the cached sequences (sampling only)."""
        h = self.tok_dropout(self.tok_embeddings(codes).unsqueeze(1))
        return self._run(h, cache.length, cache)[:, -1]

    def loss(self, codes: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """Next-token cross-entropy (nats) of full sequences ``codes`` ``(B, T)``."""
        logits = self(codes[:, :-1], labels)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), codes.reshape(-1), reduction=reduction)


def build_model(cfg: GPTConfig) -> ClassConditionalGPT:
    return ClassConditionalGPT(cfg)
