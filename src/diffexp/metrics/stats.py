"""Constant-memory feature statistics and the metrics computed from them (FID, KID, IS).

Memory model (independent of the number of samples n):
- FID: running sums ``n``, ``Σ f`` (D) and ``Σ f fᵀ`` (D x D), all float64. For D = 2048 that is
  32 MiB per accumulator. ``cov = (Σ f fᵀ − n μ μᵀ) / (n − 1)``.
- IS: per split ``s`` (sample i goes to split ``i mod splits``, i.e. a fixed interleaving instead
  of torch-fidelity's seeded shuffle; i is the global sample index when given, so DDP sharding and
  batch size do not change the splits): ``Σ p(y|x)`` (K), ``Σ_x Σ_y p log p`` and a count.
- KID needs the features themselves: only the first ``kid_max_samples`` features are kept
  (default 10,000: 80 MiB at D = 2048 float32, 5 MiB at D = 128). Samples are i.i.d., so the first
  m are an unbiased subset; the value reported says how many were used (``n_gen_kid``).

DDP: :class:`FeatureAccumulator` is a ``torchmetrics.Metric``; its states are summed (sums) or
gathered (KID features — features, never images) across ranks when ``compute``/``statistics`` is
called, so *every rank must call it* (never inside a ``rank_zero_only`` hook: torchmetrics #2684).
Each rank keeps at most ``ceil(kid_max_samples / world_size)`` features.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torchmetrics import Metric

from diffexp.metrics.utils import dist_info

# "Confidently classified": max softmax >= 0.9, the threshold of issue 16 (bench/bench_peer.py uses the same).
CONFIDENT = 0.9


@dataclass
class FeatureStats:
    """Statistics of a set of features: n, mean, covariance, optional KID subset and IS sums."""

    n: int
    mu: torch.Tensor  # (D,) float64
    cov: torch.Tensor  # (D, D) float64, unbiased (n - 1)
    features: torch.Tensor | None = None  # (m, D) float32, m <= kid_max_samples
    is_p_sum: torch.Tensor | None = None  # (splits, K) float64
    is_plogp_sum: torch.Tensor | None = None  # (splits,) float64
    is_count: torch.Tensor | None = None  # (splits,) float64
    confident_count: float | None = None  # images whose max softmax >= CONFIDENT
    class_count: torch.Tensor | None = None  # (K,) float64, images per predicted class
    class_correct: torch.Tensor | None = None  # (K,) float64, labelled images per label whose argmax is that label
    class_labelled: torch.Tensor | None = None  # (K,) float64, labelled images per label
    meta: dict[str, Any] = field(default_factory=dict)
    cov_sqrt: torch.Tensor | None = None  # (D, D) float64 Σ^{1/2}, memoised by sqrt_cov()

    @property
    def num_features(self) -> int:
        return int(self.mu.shape[0])

    def sqrt_cov(self) -> torch.Tensor:
        """Σ^{1/2} (symmetric PSD square root), computed once and kept (saved with reference stats,
        so each FID against them costs one ``eigvalsh`` instead of two eigen-decompositions)."""
        if self.cov_sqrt is None:
            self.cov_sqrt = psd_sqrt(self.cov)
        return self.cov_sqrt

    def inception_score(self) -> tuple[float, float]:
        """``(mean, std)`` over splits of IS = exp(E_x KL(p(y|x) ‖ p(y)))."""
        if self.is_p_sum is None:
            raise ValueError("these statistics hold no logits (extractor without logits)")
        return inception_score_from_sums(self.is_p_sum, self.is_plogp_sum, self.is_count)

    def confidence(self) -> dict[str, Any]:
        """Share of images classified with max softmax >= ``CONFIDENT`` (real MNIST test images with the
        project classifier: 0.96), the predicted-class counts and their entropy normalised to [0, 1]
        (1 = perfectly balanced classes)."""
        if self.class_count is None:
            raise ValueError("these statistics hold no logits (extractor without logits)")
        counts = self.class_count.double()
        share = counts / counts.sum().clamp_min(1)
        nz = share[share > 0]
        entropy = float(-(nz * nz.log()).sum() / math.log(len(share))) if len(share) > 1 else 1.0
        return {"confident": float(self.confident_count) / max(self.n, 1), "confident_threshold": CONFIDENT,
                "class_entropy": max(0.0, entropy), "class_counts": [int(c) for c in counts]}

    def class_accuracy(self) -> dict[str, Any]:
        """Share of labelled images whose classifier argmax is the label they were generated for,

            acc = (1/n) Σ_i 1[argmax_k p(k | x_i) = y_i],  stderr = √(acc (1 − acc) / n)

        (binomial standard error), with the per-label accuracies. Raises when no image carried a label."""
        n = 0.0 if self.class_labelled is None else float(self.class_labelled.sum())
        if n == 0:
            raise ValueError("class_accuracy needs the labels the samples were generated for (a class-conditional "
                             "checkpoint, or guidance=classifier); these samples have none")
        acc = float(self.class_correct.sum()) / n
        per = [float(c / m) if m > 0 else None for c, m in zip(self.class_correct.double(), self.class_labelled.double())]
        return {"class_accuracy": acc, "class_accuracy_stderr": math.sqrt(acc * (1 - acc) / n),
                "n_labelled": int(n), "class_accuracy_per_class": per}

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of tensors/primitives (loadable with ``torch.load(weights_only=True)``)."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureStats:
        return cls(**d)

    @classmethod
    def from_features(cls, features: torch.Tensor, logits: torch.Tensor | None = None, **kwargs: Any) -> FeatureStats:
        """One-shot statistics of an (n, D) tensor (convenience; uses a FeatureAccumulator)."""
        acc = FeatureAccumulator(features.shape[1], None if logits is None else logits.shape[1], **kwargs)
        acc.update(features, logits)
        return acc.statistics()


def psd_sqrt(cov: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a PSD matrix via ``eigh`` in float64 (negative eigenvalues -> 0)."""
    cov = cov.double().cpu()
    lam, vec = torch.linalg.eigh((cov + cov.T) / 2)
    return (vec * lam.clamp(min=0).sqrt()) @ vec.T


def frechet_distance(mu1: torch.Tensor, cov1: torch.Tensor, mu2: torch.Tensor, cov2: torch.Tensor,
                     cov2_sqrt: torch.Tensor | None = None) -> float:
    """Fréchet distance between N(μ1, Σ1) and N(μ2, Σ2) (Dowson & Landau 1982; FID, Heusel et al. 2017):

        d² = ‖μ1 − μ2‖² + tr(Σ1) + tr(Σ2) − 2 tr((Σ2^{1/2} Σ1 Σ2^{1/2})^{1/2})

    ``Σ2^{1/2} Σ1 Σ2^{1/2}`` has the same spectrum as Σ1 Σ2, so tr((Σ1Σ2)^{1/2}) is the sum of the
    square roots of its eigenvalues; being symmetric PSD, ``eigvalsh`` in float64 suffices (clamped at
    0, no complex ``sqrtm`` artefacts). Pass ``cov2_sqrt`` (e.g. ``FeatureStats.sqrt_cov()`` of the
    reference) to skip its eigen-decomposition.
    """
    mu1, mu2, cov1, cov2 = (t.double().cpu() for t in (mu1, mu2, cov1, cov2))
    r = psd_sqrt(cov2) if cov2_sqrt is None else cov2_sqrt.double().cpu()
    m = r @ cov1 @ r
    tr_covmean = torch.linalg.eigvalsh((m + m.T) / 2).clamp(min=0).sqrt().sum()
    d2 = (mu1 - mu2).square().sum() + cov1.trace() + cov2.trace() - 2 * tr_covmean
    return float(d2.clamp(min=0))


def polynomial_mmd2(x: torch.Tensor, y: torch.Tensor, degree: int = 3, gamma: float | None = None, coef: float = 1.0) -> float:
    """Unbiased MMD² with the polynomial kernel k(a, b) = (γ aᵀb + c)^d, γ = 1/D by default
    (Bińkowski et al. 2018, eq. 3; as torch-fidelity / torchmetrics):

        MMD²_u = Σ_{i≠j} k(x_i,x_j)/(m(m−1)) + Σ_{i≠j} k(y_i,y_j)/(n(n−1)) − 2 Σ_{i,j} k(x_i,y_j)/(mn)
    """
    x, y = x.double(), y.double()
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    m, n = x.shape[0], y.shape[0]
    kxx = (x @ x.T * gamma + coef) ** degree
    kyy = (y @ y.T * gamma + coef) ** degree
    kxy = (x @ y.T * gamma + coef) ** degree
    sxx = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    syy = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return float(sxx + syy - 2 * kxy.sum() / (m * n))


def kernel_inception_distance(
    x: torch.Tensor, y: torch.Tensor, subset_size: int = 1000, subsets: int = 100, seed: int = 0, **kernel: Any
) -> tuple[float, float, int]:
    """KID: mean and std of :func:`polynomial_mmd2` over ``subsets`` random subsets (without
    replacement, fixed seed) of size ``min(subset_size, len(x), len(y))``. Returns
    ``(mean, std, subset_size_used)``. Unbiased, so ≈ 0 (possibly < 0) for equal distributions.
    """
    m = min(subset_size, len(x), len(y))
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {len(x)} and {len(y)}")
    g = torch.Generator().manual_seed(seed)
    vals = torch.tensor([
        polynomial_mmd2(x[torch.randperm(len(x), generator=g)[:m]], y[torch.randperm(len(y), generator=g)[:m]], **kernel)
        for _ in range(subsets)
    ], dtype=torch.float64)
    std = float(vals.std(unbiased=False)) if subsets > 1 else 0.0
    return float(vals.mean()), std, m


def inception_score_from_sums(p_sum: torch.Tensor, plogp_sum: torch.Tensor, count: torch.Tensor) -> tuple[float, float]:
    """IS per split s (Salimans et al. 2016): with p̂_s = Σ p(y|x)/n_s,

        IS_s = exp( Σ_x Σ_y p log p / n_s − Σ_y p̂_s log p̂_s ) = exp(E_x KL(p(y|x) ‖ p̂_s))

    Returns mean and (population) std over non-empty splits, as torch-fidelity does.
    """
    keep = count > 0
    p_sum, plogp_sum, count = p_sum[keep].double(), plogp_sum[keep].double(), count[keep].double()
    p_hat = p_sum / count[:, None]
    ent_marg = torch.special.xlogy(p_hat, p_hat).sum(1)
    scores = torch.exp(plogp_sum / count - ent_marg)
    return float(scores.mean()), float(scores.std(unbiased=False)) if len(scores) > 1 else 0.0


def inception_score(logits: torch.Tensor, splits: int = 10) -> tuple[float, float]:
    """One-shot IS of (n, K) logits, same split assignment (i mod splits) as the accumulator."""
    acc = FeatureAccumulator(1, logits.shape[1], is_splits=splits, kid_max_samples=0)
    acc.update(torch.zeros(len(logits), 1), logits)
    return acc.statistics().inception_score()


class FeatureAccumulator(Metric):
    """Accumulate features (and optionally logits) in constant memory; ``statistics()`` -> FeatureStats.

    ``update(features (B, D), logits (B, K) | None)``. States are registered with torchmetrics so that
    ``statistics()``/``compute()`` reduce them across DDP ranks (sum / gather).
    """

    full_state_update = False
    higher_is_better = None

    def __init__(self, num_features: int, num_classes: int | None = None, *, kid_max_samples: int = 10_000,
                 is_splits: int = 10, **kwargs: Any):
        super().__init__(**kwargs)
        self.num_features, self.num_classes = num_features, num_classes
        self.kid_max_samples, self.is_splits = kid_max_samples, is_splits
        d = num_features
        self.add_state("n", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum", persistent=False)
        self.add_state("f_sum", torch.zeros(d, dtype=torch.float64), dist_reduce_fx="sum", persistent=False)
        self.add_state("ff_sum", torch.zeros(d, d, dtype=torch.float64), dist_reduce_fx="sum", persistent=False)
        self.add_state("kid_features", [], dist_reduce_fx="cat", persistent=False)
        if num_classes is not None:
            k = num_classes
            self.add_state("is_p_sum", torch.zeros(is_splits, k, dtype=torch.float64), dist_reduce_fx="sum", persistent=False)
            self.add_state("is_plogp_sum", torch.zeros(is_splits, dtype=torch.float64), dist_reduce_fx="sum", persistent=False)
            self.add_state("is_count", torch.zeros(is_splits, dtype=torch.float64), dist_reduce_fx="sum", persistent=False)
            self.add_state("confident_count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum", persistent=False)
            self.add_state("class_count", torch.zeros(k, dtype=torch.float64), dist_reduce_fx="sum", persistent=False)
            self.add_state("class_correct", torch.zeros(k, dtype=torch.float64), dist_reduce_fx="sum", persistent=False)
            self.add_state("class_labelled", torch.zeros(k, dtype=torch.float64), dist_reduce_fx="sum", persistent=False)

    def _kid_stored(self) -> int:
        feats = self.kid_features
        return sum(len(f) for f in feats) if isinstance(feats, list) else len(feats)

    def update(self, features: torch.Tensor, logits: torch.Tensor | None = None,
               index: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> None:
        """Add a batch. ``index``: global sample indices (IS split = index mod splits); default: the
        running local count. ``labels``: the classes the samples were generated for (class accuracy)."""
        f = features.detach().reshape(len(features), -1)
        if f.shape[1] != self.num_features:
            raise ValueError(f"expected {self.num_features} features, got {f.shape[1]}")
        local_n = int(self.n.item())
        f64 = f.double()
        self.n += len(f)
        self.f_sum += f64.sum(0)
        self.ff_sum += f64.T @ f64
        _, world = dist_info()
        room = math.ceil(self.kid_max_samples / world) - self._kid_stored()
        if room > 0:
            self.kid_features.append(f[:room].float().clone())
        if self.num_classes is not None:
            if logits is None:
                raise ValueError("this accumulator was built with num_classes: pass logits")
            logp = torch.log_softmax(logits.detach().double(), dim=1)
            if index is None:
                index = torch.arange(len(f)) + local_n
            split = torch.as_tensor(index, device=f.device).long() % self.is_splits
            self.is_p_sum.index_add_(0, split, logp.exp())
            self.is_plogp_sum.index_add_(0, split, (logp.exp() * logp).sum(1))
            self.is_count.index_add_(0, split, torch.ones(len(f), dtype=torch.float64, device=f.device))
            p_max, label = logp.exp().max(dim=1)
            self.confident_count += (p_max >= CONFIDENT).sum()
            self.class_count += torch.bincount(label, minlength=self.num_classes).double()
            if labels is not None:
                y = torch.as_tensor(labels, device=f.device).long().reshape(-1)
                if len(y) != len(f) or bool(((y < 0) | (y >= self.num_classes)).any()):
                    raise ValueError(f"labels must be {len(f)} class indices in [0, {self.num_classes}), got {y.tolist()}")
                ones = torch.ones(len(y), dtype=torch.float64, device=f.device)
                self.class_labelled.index_add_(0, y, ones)
                self.class_correct.index_add_(0, y, (label == y).double())

    def _stats(self) -> FeatureStats:
        n = int(self.n.item())
        mu = self.f_sum / max(n, 1)
        cov = (self.ff_sum - n * torch.outer(mu, mu)) / max(n - 1, 1)
        feats = self.kid_features
        if isinstance(feats, list):
            feats = torch.cat(feats) if feats else torch.zeros(0, self.num_features)
        feats = feats[: self.kid_max_samples].cpu()
        extra = {}
        if self.num_classes is not None:
            extra = {"is_p_sum": self.is_p_sum.cpu().clone(), "is_plogp_sum": self.is_plogp_sum.cpu().clone(),
                     "is_count": self.is_count.cpu().clone(), "confident_count": float(self.confident_count.item()),
                     "class_count": self.class_count.cpu().clone(), "class_correct": self.class_correct.cpu().clone(),
                     "class_labelled": self.class_labelled.cpu().clone()}
        return FeatureStats(n=n, mu=mu.cpu().clone(), cov=cov.cpu().clone(), features=feats, **extra)

    def statistics(self) -> FeatureStats:
        """Synchronised statistics (collective under DDP: call on every rank)."""
        with self.sync_context(should_sync=True, should_unsync=True):
            return self._stats()

    def compute(self) -> FeatureStats:  # torchmetrics syncs before calling this
        return self._stats()


def sliced_wasserstein(x: torch.Tensor, y: torch.Tensor, projections: int = 256, seed: int = 0) -> float:
    """Sliced Wasserstein-2 distance (Rabin et al. 2011; Bonneel et al. 2015)

        SW₂(P, Q) = ( E_{θ ~ U(S^{D-1})} W₂²(θᵀ#P, θᵀ#Q) )^{1/2}

    with ``projections`` random directions θ (fixed ``seed``) and the 1-D W₂² = ∫₀¹ |F⁻¹(u) − G⁻¹(u)|² du
    of the empirical distributions, evaluated on the grid u = (k + ½)/m, m = max(len(x), len(y))
    (exact when the sizes are equal). Closed form for a check: between N(0, I) and N(μ, I) in D
    dimensions, SW₂² = E(θᵀμ)² = ‖μ‖²/D.
    """
    x, y = x.double().cpu().flatten(1), y.double().cpu().flatten(1)
    if x.shape[1] != y.shape[1] or min(len(x), len(y)) < 1:
        raise ValueError(f"need two non-empty point sets of one dimension, got {tuple(x.shape)} and {tuple(y.shape)}")
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(x.shape[1], projections, generator=g, dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    px, py = (x @ theta).sort(0).values, (y @ theta).sort(0).values
    m = max(len(px), len(py))
    u = (torch.arange(m, dtype=torch.float64) + 0.5) / m
    qx = px[(u * len(px)).long().clamp(max=len(px) - 1)]
    qy = py[(u * len(py)).long().clamp(max=len(py) - 1)]
    return float((qx - qy).square().mean().sqrt())
