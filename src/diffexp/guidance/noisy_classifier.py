"""The noise-conditional classifier p_φ(y | x_t, t) of classifier guidance (Dhariwal & Nichol 2021, §4.1:
"we train a classifier p_φ(y|x_t, t) on noisy images x_t"), trained on x_t of the chosen process.

Training draws t from the process's training range (``Process.t_min..t_max``; ddpm: uniform indices), forms
x_t = α_t x_0 + σ_t ε by ``Process.q_sample`` and minimises the cross-entropy of the labels — so the
classifier sees exactly the inputs the guided sampler gives it. The network receives ``process.net_time(t)``
like the denoiser's. Checkpoints carry the whole config (``CLASSIFIER_KEY``): :func:`load_classifier` rebuilds
the network, process and class count from the file alone.
"""

from __future__ import annotations

import os

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffexp.models.embeddings import TimestepEmbedding

CLASSIFIER_KEY = "diffexp_noisy_classifier"


class NoisyClassifier(nn.Module):
    """A small t-conditioned CNN: conv blocks with FiLM from the time embedding, global pooling, logits."""

    def __init__(self, in_channels: int, num_classes: int, channels: int = 32, num_levels: int = 2,
                 time_embed_dim: int = 64):
        super().__init__()
        self.num_classes = int(num_classes)
        self.time = TimestepEmbedding(time_embed_dim, time_embed_dim)
        self.inp = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.blocks, self.films = nn.ModuleList(), nn.ModuleList()
        ch = channels
        for i in range(num_levels):
            out = channels * 2 ** (i + 1) if i < num_levels - 1 else ch
            self.blocks.append(nn.Conv2d(ch, out, 3, padding=1, stride=2 if i < num_levels - 1 else 1))
            self.films.append(nn.Linear(time_embed_dim, 2 * out))
            ch = out
        self.head = nn.Linear(ch, num_classes)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        emb = self.time(t)
        h = F.silu(self.inp(x))
        for conv, film in zip(self.blocks, self.films):
            scale, shift = film(emb)[:, :, None, None].chunk(2, dim=1)
            h = F.silu(F.group_norm(conv(h), 8) * (1 + scale) + shift)
        return self.head(h.mean((2, 3)))


class NoisyClassifierModule(L.LightningModule):
    def __init__(self, net: NoisyClassifier, process, lr: float = 1e-3, config: dict | None = None, seed: int = 0):
        super().__init__()
        self.net, self.process, self.lr, self.config, self.seed = net, process, float(lr), config or {}, int(seed)

    def _noisy(self, x0: Tensor, generator=None) -> tuple[Tensor, Tensor]:
        p = self.process
        n = x0.shape[0]
        if p.is_discrete:
            t = torch.randint(0, p.num_timesteps, (n,), device=x0.device, generator=generator)
        else:
            u = torch.rand(n, device=x0.device, dtype=torch.float64, generator=generator)
            t = p.t_min + (p.t_max - p.t_min) * u
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        return p.q_sample(x0, t, noise).to(x0.dtype), t

    def _step(self, batch, prefix: str, generator=None):
        x0, y = batch[0].float(), batch[1].long()
        x_t, t = self._noisy(x0, generator)
        logits = self.net(x_t, self.process.net_time(t))
        loss = F.cross_entropy(logits, y)
        acc = (logits.argmax(1) == y).float().mean()
        self.log(f"{prefix}/loss", loss, prog_bar=True, batch_size=x0.shape[0])
        self.log(f"{prefix}/acc", acc, prog_bar=True, batch_size=x0.shape[0])
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        g = torch.Generator(device=batch[0].device).manual_seed(self.seed + batch_idx)  # the same x_t each time
        self._step(batch, "val", g)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.net.parameters(), lr=self.lr)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[CLASSIFIER_KEY] = {"config": self.config}


def build_classifier(cfg, in_channels: int, num_classes: int) -> NoisyClassifier:
    opts = dict(cfg.get("classifier") or {})
    return NoisyClassifier(in_channels, num_classes, **opts)


def load_classifier(path: str | os.PathLike, map_location="cpu") -> tuple[NoisyClassifier, dict]:
    """(the trained classifier in eval mode, its config) from a ``train_classifier.py`` checkpoint."""
    from omegaconf import OmegaConf

    from diffexp.validation import ConfigError

    if not os.path.isfile(path):
        raise ConfigError(f"classifier_ckpt={path}: no such file; give a checkpoint written by train_classifier.py")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # noqa: BLE001  (truncated or foreign file)
        raise ConfigError(f"classifier_ckpt={path} is not a readable checkpoint: {e}") from e
    if not isinstance(ckpt, dict) or CLASSIFIER_KEY not in ckpt:
        raise ConfigError(f"classifier_ckpt={path} is not a noisy-classifier checkpoint (written by train_classifier.py)")
    config = ckpt[CLASSIFIER_KEY]["config"]
    cfg = OmegaConf.create(config)
    net = build_classifier(cfg, int(config["in_channels"]), int(config["num_classes"]))
    state = {k[len("net."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    net.load_state_dict(state)
    return net.eval(), config


def classifier_guidance_from_config(cfg, device="cpu"):
    """The ClassifierGuidance of ``guidance=classifier guidance.scale=s classifier_ckpt=PATH`` (None for
    ``guidance=none`` or no guidance group), with the classifier on ``device``."""
    from diffexp.guidance.classifier import ClassifierGuidance
    from diffexp.validation import ConfigError

    node = cfg.get("guidance")
    name = None if node is None else node.get("name", "none")
    if name in (None, "none"):
        return None
    if name != "classifier":
        raise ConfigError(f"guidance={name}: valid: none, classifier")
    path = cfg.get("classifier_ckpt")
    if not path:
        raise ConfigError("guidance=classifier needs classifier_ckpt=<checkpoint of train_classifier.py>")
    net, _ = load_classifier(path, map_location=device)
    try:
        return ClassifierGuidance(net.to(device), scale=node.get("scale", 1.0))
    except ValueError as e:
        raise ConfigError(f"guidance.scale={node.get('scale')}: {e}") from e
