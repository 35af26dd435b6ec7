"""Autoencoder training: reconstruction grids and the reconstruction FID (the floor of latent diffusion).

:class:`ReconstructionCallback` (``conf/callbacks/reconstruction.yaml``), every ``every_n_steps`` optimizer
steps and at the end of training:

- a grid of ``num_grid`` fixed validation images (odd rows) above their reconstructions from the posterior
  mean (even rows), logged as ``reconstructions`` and saved under ``out_dir``;
- the FID between the reconstructions of ``num_samples`` images of ``split`` (the first n of a seeded
  permutation) and the cached statistics of the whole split, with the project's extractor (the classifier by
  default), logged as ``rec_fid/<extractor>-<hash6>/n<n>/ref-<split>``; the reconstruction MSE of the same
  images (per pixel, data in [−1, 1]) as ``rec_mse/<split>-n<n>``. A latent diffusion model decoding through
  this autoencoder cannot score a better FID than its reconstruction FID (same n, same extractor).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from diffexp.callbacks.periodic import PeriodicCallback
from diffexp.images import image_grid, log_image, save_png
from diffexp.metrics import compute_metrics
from diffexp.metrics.selection import cached_reference_stats, make_metrics_extractor
from diffexp.metrics.utils import dist_info


class ReconstructionCallback(PeriodicCallback):
    def __init__(self, extractor: Any = None, every_n_steps: int | None = 1000, at_end: bool = True, num_grid: int = 32,
                 num_samples: int = 1000, split: str = "test", batch_size: int = 250, seed: int = 0,
                 cache_dir: str | None = None, out_dir: str | None = None):
        super().__init__(every_n_steps, at_end)
        self.extractor_cfg, self.extractor = extractor, None
        self.num_grid, self.num_samples, self.split = int(num_grid), int(num_samples), split
        self.batch_size, self.seed, self.cache_dir, self.out_dir = int(batch_size), int(seed), cache_dir, out_dir
        self.real_stats = None
        self.last_result: dict[str, Any] | None = None
        self.last_paths: list[Path] = []

    def _split(self, dm) -> str:
        splits = getattr(dm, "splits", (self.split,))
        return next(s for s in (self.split, "val", "train") if s in splits)

    @torch.no_grad()
    def _reconstruct(self, pl_module, x: torch.Tensor) -> torch.Tensor:
        ae = pl_module.autoencoder
        return ae.decode(ae.encode(x.to(pl_module.device)).mode()).clamp(*pl_module.data_range)

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        step = trainer.global_step
        self._last_step = step
        dm = trainer.datamodule
        split = self._split(dm)
        x, _ = dm.tensors(split)
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.seed))[: self.num_samples]
        x = x[idx]
        was_training = pl_module.training
        pl_module.eval()
        try:
            result = self._fid(trainer, pl_module, dm, split, x)
            if trainer.is_global_zero:
                self._grid(trainer, pl_module, x[: self.num_grid], step)
        finally:
            pl_module.train(was_training)
        return result

    def _fid(self, trainer, pl_module, dm, split: str, x: torch.Tensor) -> dict[str, Any]:
        if self.extractor is None:
            # rank 0 first: the classifier extractor is trained once and cached, the other ranks then load it
            if trainer.is_global_zero:
                self.extractor = make_metrics_extractor(self.extractor_cfg or "classifier", dm)
            if dist_info()[1] > 1:
                torch.distributed.barrier()
            if self.extractor is None:
                self.extractor = make_metrics_extractor(self.extractor_cfg or "classifier", dm)
            self.extractor.to(pl_module.device)
            self.real_stats = cached_reference_stats(dm, split, self.extractor, None, self.cache_dir)
        sq = {"sum": 0.0}

        def reconstruct(seeds: list[int]) -> torch.Tensor:
            xb = x[seeds]
            rec = self._reconstruct(pl_module, xb)
            sq["sum"] += float((rec.cpu() - xb).square().sum())
            return rec

        res = compute_metrics(reconstruct, len(x), self.extractor, self.real_stats, self.batch_size, metrics=("fid",),
                              data_range=pl_module.data_range, device=pl_module.device)
        total = torch.tensor(sq["sum"], dtype=torch.float64, device=pl_module.device)
        if dist_info()[1] > 1:
            torch.distributed.all_reduce(total)
        mse = float(total) / x.numel()
        tag = f"{self.extractor.name}-{self.extractor.weights_hash[:6]}"
        values = {f"rec_fid/{tag}/n{len(x)}/ref-{split}-n{res['n_real']}": float(res["fid"]),
                  f"rec_mse/{split}-n{len(x)}": mse}
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in values.items()})
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(values, step=trainer.global_step)
            out = Path(self.out_dir or Path(trainer.default_root_dir) / "reconstructions")
            out.mkdir(parents=True, exist_ok=True)
            with open(out / "evaluations.jsonl", "a") as f:
                f.write(json.dumps({"step": trainer.global_step, "rec_fid": float(res["fid"]), "rec_mse": mse,
                                    "n": len(x), "n_real": res["n_real"], "split": split, "extractor": tag,
                                    "keys": values}) + "\n")
        rank_zero_info(f"[reconstruction] step {trainer.global_step}: rec FID {res['fid']:.4g} ({tag}, n={len(x)} vs "
                       f"{split} n={res['n_real']}), rec MSE {mse:.4g}")
        self.last_result = {"fid": float(res["fid"]), "mse": mse, "keys": values}
        return self.last_result

    def _grid(self, trainer, pl_module, x: torch.Tensor, step: int) -> None:
        rec = self._reconstruct(pl_module, x).cpu()
        nrow = min(8, len(x))
        rows = []
        for i in range(0, len(x), nrow):  # originals above their reconstructions
            rows += [x[i:i + nrow], rec[i:i + nrow]]
        image = image_grid(torch.cat(rows), nrow=nrow, data_range=pl_module.data_range)
        out = Path(self.out_dir or Path(trainer.default_root_dir) / "reconstructions")
        self.last_paths = [save_png(image, out / f"reconstructions_step{step:07d}.png")]
        log_image(trainer, "reconstructions", image, step)
