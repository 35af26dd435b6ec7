"""2-D toy distributions, generated deterministically from a seed (train/val/test use seeds s, s+1, s+2).

``gaussian_mixture`` has a known density: :meth:`Toy2DDataModule.oracle` gives its exact noised
marginal and optimal denoiser (:class:`diffexp.oracles.GaussianMixtureOracle`). Labels: mixture component (gaussian_mixture), moon index (moons), else zeros.
"""

from __future__ import annotations

import math

import torch

from diffexp.data.base import BaseDataModule

DATASETS = ("gaussian_mixture", "swiss_roll", "moons", "checkerboard")


class Toy2DDataModule(BaseDataModule):
    """2-D points, shape (2,), float32, ``data_range=None``.

    Args:
        dataset: gaussian_mixture | swiss_roll | moons | checkerboard.
        num_train, num_val, num_test: sizes of the generated splits.
        data_seed: generation seed (split ``i`` uses ``data_seed + i``).
        means: mixture means (K×2); default ``num_components`` points evenly on a circle of ``radius``.
        weights: mixture weights (normalised); default uniform.
        std: isotropic standard deviation of every component.
        noise: Gaussian noise std added to swiss_roll / moons.
        **kwargs: loader options of :class:`~diffexp.data.base.BaseDataModule`.
    """

    data_shape = (2,)
    data_range = None
    div = None

    def __init__(self, dataset: str = "gaussian_mixture", num_train: int = 10000, num_val: int = 2000,
                 num_test: int = 2000, data_seed: int = 0, num_components: int = 8, radius: float = 2.0,
                 means: list[list[float]] | None = None, weights: list[float] | None = None, std: float = 0.1,
                 noise: float = 0.05, **kwargs):
        if kwargs.get("hflip"):
            raise ValueError("hflip makes no sense for 2-D points")
        super().__init__(**kwargs)
        if dataset not in DATASETS:
            raise ValueError(f"unknown toy2d dataset {dataset!r}; choose from {DATASETS}")
        self.dataset_name, self.name = dataset, dataset
        self.sizes = {"train": int(num_train), "val": int(num_val), "test": int(num_test)}
        if min(self.sizes.values()) < 0:
            raise ValueError(f"split sizes must be >= 0, got num_train={num_train}, num_val={num_val}, num_test={num_test}")
        self.data_seed, self.noise, self.std = int(data_seed), float(noise), float(std)
        if means is None:
            a = torch.arange(num_components, dtype=torch.float64) * (2 * math.pi / num_components)
            means = torch.stack([radius * a.cos(), radius * a.sin()], 1)
        self.means = torch.tensor([[float(v) for v in m] for m in means], dtype=torch.float64).reshape(-1, 2)
        k = len(self.means)
        w = torch.ones(k, dtype=torch.float64) if weights is None else torch.tensor([float(v) for v in weights], dtype=torch.float64)
        if w.shape != (k,) or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"weights must be {k} non-negative numbers, got {weights}")
        self.weights = w / w.sum()
        self.num_classes = {"gaussian_mixture": k, "moons": 2}.get(dataset)

    # --- generation ---------------------------------------------------------------------------
    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` points (float32 (n,2)) and labels (int64 (n,)) of the configured distribution."""
        g, d = generator, self.dataset_name
        zeros = torch.zeros(n, dtype=torch.long)
        if d == "gaussian_mixture":
            y = torch.multinomial(self.weights, n, replacement=True, generator=g)
            x = self.means[y] + self.std * torch.randn(n, 2, generator=g, dtype=torch.float64)
        elif d == "swiss_roll":  # t in [1.5π, 4.5π]: (t cos t, t sin t) / 5
            t = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=g, dtype=torch.float64))
            x = torch.stack([t * t.cos(), t * t.sin()], 1) / 5 + self.noise * torch.randn(n, 2, generator=g, dtype=torch.float64)
            y = zeros
        elif d == "moons":  # sklearn's two moons, centred: upper (cos θ, sin θ), lower (1-cos θ, 1/2-sin θ)
            y = (torch.rand(n, generator=g) < 0.5).long()
            th = math.pi * torch.rand(n, generator=g, dtype=torch.float64)
            upper = torch.stack([th.cos(), th.sin()], 1)
            lower = torch.stack([1 - th.cos(), 0.5 - th.sin()], 1)
            x = torch.where(y[:, None].bool(), lower, upper) - torch.tensor([0.5, 0.25], dtype=torch.float64)
            x = x + self.noise * torch.randn(n, 2, generator=g, dtype=torch.float64)
        else:  # checkerboard on [-2, 2]^2 with 8 filled unit squares
            x1 = 4 * torch.rand(n, generator=g, dtype=torch.float64) - 2
            x2 = torch.rand(n, generator=g, dtype=torch.float64) - 2 * torch.randint(0, 2, (n,), generator=g)
            x = torch.stack([x1, x2 + (x1.floor() % 2)], 1)
            y = zeros
        return x.float(), y

    def _load(self):
        empty = (torch.zeros(0, 2), torch.zeros(0, dtype=torch.long))  # (an empty train split is reported by check())
        return {s: self.sample(n, torch.Generator().manual_seed(self.data_seed + i)) if n > 0 else empty
                for i, (s, n) in enumerate(self.sizes.items())}

    def _key_params(self):
        return {"sizes": self.sizes, "data_seed": self.data_seed, "noise": self.noise, "std": self.std,
                "means": self.means.tolist(), "weights": self.weights.tolist()}

    # --- the exact denoiser of the mixture -------------------------------------------------------
    def oracle(self, process, prediction: str = "eps"):
        """The exact denoiser of this mixture under ``process`` (a ``DiffusionProcess`` or schedule):
        a :class:`~diffexp.oracles.GaussianMixtureOracle` with the data's weights, means and isotropic
        ``std²`` covariances (``marginal_log_prob``, ``eps_and_x0``, or as a perfect network)."""
        if self.dataset_name != "gaussian_mixture":
            raise ValueError(f"an exact denoiser exists only for dataset=gaussian_mixture, not {self.dataset_name!r}")
        from diffexp.oracles import GaussianMixtureOracle  # data does not otherwise depend on the process

        return GaussianMixtureOracle(self.weights, self.means, self.std**2, process, prediction)
