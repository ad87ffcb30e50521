"""pFID: FID of reconstructions decoded from perturbed tokens ("Robust Latent Matters", ImageFolder).

Definition (the ImageFolder perturbation; only the perturbation is public, so the evaluation around it is
vtbench's): for every token, the ``delta`` codes nearest the vector its quantiser saw form its neighbour set
(``Tokenizer.neighbours``; per kind in ``vtbench.tokenizers.neighbours`` and ``metrics/pfid.toml``). A
fraction ``beta`` of the images is perturbed; in a perturbed image each token is, with probability ``alpha``,
replaced by a member of its set drawn uniformly (the set holds the token's own code, so a replacement can
leave it unchanged). The perturbed tokens are decoded and FID is computed exactly as ``rfid``: same extractor,
same resize, same cached statistics of the originals.

Randomness is per image: a generator seeded from ``(seed, image id)`` draws whether the image is perturbed,
then one uniform and one set index per token, so the value does not depend on the batch size, the order or
the number of processes. (ImageFolder perturbs the first ``floor(B * beta)`` images of each batch, which
depends on the batch size; vtbench draws per image instead.)

The runner asks the metric for perturbed tokens (``perturbed_tokens``), decodes them through the same
preprocessing inverse and uint8 quantisation as the reconstruction, and hands them over as
``batch.perturbed[metric.key]``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from vtbench.metrics.base import Batch, MetricContext, MetricUnavailable, MetricValue, Output
from vtbench.metrics.fid import RFID

_SPEC = re.compile(r"^a(?P<alpha>[0-9.]+)_d(?P<delta>[0-9]+)_b(?P<beta>[0-9.]+)$")


@dataclass(frozen=True)
class PerturbationSpec:
    """The pFID settings; ``key`` names them in the metric key (``pfid@a0.5_d100_b1``)."""

    alpha: float = 0.5
    delta: int = 100
    beta: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"pFID alpha must be in [0, 1], got {self.alpha}")
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"pFID beta must be in [0, 1], got {self.beta}")
        if int(self.delta) < 1:
            raise ValueError(f"pFID delta must be >= 1, got {self.delta}")

    @property
    def key(self) -> str:
        return f"a{self.alpha:g}_d{int(self.delta)}_b{self.beta:g}"

    @classmethod
    def parse(cls, text: str, seed: int = 0) -> "PerturbationSpec":
        """``"a0.5_d100_b1"`` -> spec (the part after ``pfid@``)."""
        m = _SPEC.match(text.strip())
        if not m:
            raise ValueError(f"pFID settings {text!r}: expected a<alpha>_d<delta>_b<beta>, e.g. a0.5_d100_b1")
        return cls(alpha=float(m["alpha"]), delta=int(m["delta"]), beta=float(m["beta"]), seed=seed)

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any] | None) -> "PerturbationSpec":
        s = dict(settings or {})
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: (int(v) if k in ("delta", "seed") else float(v)) for k, v in s.items() if k in known})


def image_generator(seed: int, image_id: str) -> torch.Generator:
    """The CPU generator of one image: seeded from sha256 of ``"<seed>:<id>"``."""
    digest = hashlib.sha256(f"{seed}:{image_id}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def perturb_codes(codes: torch.Tensor, candidates: torch.Tensor, ids: list[str], spec: PerturbationSpec
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Apply the perturbation to ``codes`` (N, *layout) given ``candidates`` (N, *layout, k).

    Returns ``(perturbed codes, perturbed_image (N,) bool, changed_tokens (N,) int64)``; changed counts the
    tokens whose code differs afterwards (a draw of the token's own code is not a change).
    """
    if candidates.shape[:-1] != codes.shape:
        raise ValueError(f"neighbour sets {tuple(candidates.shape)} do not match codes {tuple(codes.shape)}")
    n, k = codes.shape[0], candidates.shape[-1]
    per_image = codes[0].numel() if n else 0
    flat_codes = codes.reshape(n, per_image)
    flat_cand = candidates.reshape(n, per_image, k)
    out = flat_codes.clone()
    perturbed = torch.zeros(n, dtype=torch.bool)
    for i, sid in enumerate(ids):
        g = image_generator(spec.seed, sid)
        chosen = bool(torch.rand((), generator=g) < spec.beta)
        u = torch.rand(per_image, generator=g)
        j = torch.randint(0, k, (per_image,), generator=g)
        if not chosen:
            continue
        perturbed[i] = True
        replace = (u < spec.alpha).to(out.device)
        pick = flat_cand[i].gather(1, j.to(flat_cand.device).unsqueeze(1)).squeeze(1)
        out[i] = torch.where(replace, pick, flat_codes[i])
    changed = (out != flat_codes).sum(1).cpu()
    return out.reshape(codes.shape), perturbed, changed


class PFID(RFID):
    """pFID: rFID of reconstructions decoded from perturbed tokens (see the module docstring).

    Args:
        device, reference_key, inception_path: as ``RFID`` (the originals' statistics are shared with rfid).
        tokenizer: the tokenizer being evaluated; its ``perturbation_support()`` decides whether pFID is defined
            (continuous latents, codecs: ``MetricUnavailable`` with the reason, so the value is null).
        settings: the protocol's ``[pfid]`` table (``alpha``, ``delta``, ``beta``, ``seed``).
        variant: explicit settings from the metric name (``--metrics pfid@a0.25_d100_b1``) overriding
            ``settings`` (the seed stays the protocol's).
    """

    name = "pfid"
    outputs = (Output("pfid@a0.5_d100_b1", "pFID", "", False),)
    needs = frozenset({"pixels", "features", "perturbed"})

    needs_extra_decode = True
    accepts_variant = True

    @classmethod
    def from_context(cls, ctx: MetricContext) -> "PFID":
        return cls(device=ctx.device, reference_key=ctx.reference_key, tokenizer=ctx.tokenizer,
                   settings=ctx.settings, variant=ctx.variant)

    def extra_decode(self, tokens: Any, tokenizer: Any, ids: list[str]) -> Any:
        return self.perturbed_tokens(tokens, tokenizer, ids)

    def __init__(self, device: str | torch.device = "cpu", reference_key: str | None = None,
                 inception_path: str | None = None, tokenizer: Any = None,
                 settings: Mapping[str, Any] | None = None, variant: str | None = None) -> None:
        self.spec = self.spec_for(settings, variant)
        self.key = f"pfid@{self.spec.key}"
        self.outputs = self.outputs_for(self.spec)  # per instance: the key carries the settings
        if tokenizer is None:
            raise MetricUnavailable("pFID needs the tokenizer (it decodes perturbed tokens)")
        from vtbench.tokenizers.base import PerturbationUnsupported
        try:
            self.rule = tokenizer.perturbation_support()
        except PerturbationUnsupported as exc:
            raise MetricUnavailable(exc.reason) from None
        super().__init__(device=device, reference_key=reference_key, inception_path=inception_path)
        self.add_state("n_perturbed", torch.zeros((), dtype=torch.float64), "sum")
        self.add_state("n_changed", torch.zeros((), dtype=torch.float64), "sum")
        self.add_state("n_tokens", torch.zeros((), dtype=torch.float64), "sum")
        self.add_state("set_size", torch.zeros((), dtype=torch.float64), "max")

    @staticmethod
    def spec_for(settings: Mapping[str, Any] | None, variant: str | None = None) -> PerturbationSpec:
        spec = PerturbationSpec.from_settings(settings)
        return PerturbationSpec.parse(variant, seed=spec.seed) if variant else spec

    @classmethod
    def instance_id(cls, name: str, settings: Mapping[str, Any] | None = None, variant: str | None = None) -> str:
        return cls.outputs_for(cls.spec_for(settings, variant))[0].key

    @classmethod
    def check_variant(cls, variant: str) -> None:
        PerturbationSpec.parse(variant)

    @staticmethod
    def outputs_for(spec: PerturbationSpec) -> tuple[Output, ...]:
        return (Output(f"pfid@{spec.key}", f"pFID {spec.key}", "", False),)

    @classmethod
    def unavailable(cls, reason: str, n: int = 0, settings: Mapping[str, Any] | None = None,
                    variant: str | None = None) -> dict[str, MetricValue]:
        """Null values keyed by the configured settings (``pfid@a0.5_d100_b1``)."""
        out = cls.outputs_for(cls.spec_for(settings, variant))[0]
        return {out.key: MetricValue(None, n, out.higher_is_better, out.unit, out.display_name, reason)}

    def perturbed_tokens(self, tokens: Any, tokenizer: Any, ids: list[str]) -> Any:
        """The perturbed copy of ``tokens`` (a ``Tokens``) for this batch; the runner decodes it."""
        candidates = tokenizer.neighbours(tokens, int(self.spec.delta))
        codes, perturbed, changed = perturb_codes(tokens.codes, candidates, ids, self.spec)
        self.n_perturbed += float(perturbed.sum())
        self.n_changed += float(changed.sum())
        self.n_tokens += float(tokens.codes[0].numel() * len(ids))
        self.set_size = torch.maximum(self.set_size, torch.tensor(float(candidates.shape[-1]), dtype=torch.float64))
        return dataclasses.replace(tokens, codes=codes)

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        perturbed = (batch.perturbed or {}).get(self.key)
        if perturbed is None:
            raise RuntimeError(f"{self.key}: the batch carries no perturbed reconstructions (runner bug)")
        self._stats("rec").update(self.extractor.features(perturbed))
        if self.cached_reference is None:
            self._stats("ref").update(self.extractor.features(batch.original))
        return {}

    def compute(self) -> dict[str, MetricValue]:
        out = super().compute()[self.key]
        n_tok = float(self.n_tokens)
        extra = dict(out.extra)
        extra.update({"alpha": self.spec.alpha, "delta": int(self.spec.delta), "beta": self.spec.beta,
                      "seed": self.spec.seed, "neighbours": self.rule, "set_size": int(self.set_size),
                      "images_perturbed": int(self.n_perturbed),
                      "tokens_changed_fraction": (float(self.n_changed) / n_tok) if n_tok else None})
        return {self.key: MetricValue(out.value, out.n, False, "", self.outputs[0].display_name, out.reason, extra)}


__all__ = ["PFID", "PerturbationSpec", "image_generator", "perturb_codes"]
