"""Feature extractors for sample-quality metrics (config group ``extractor``).

Every extractor is an ``nn.Module`` that is *always* in eval mode (``train()`` is a no-op, so a
``LightningModule.train()`` cannot flip BatchNorm into batch statistics), has ``name``,
``num_features``, ``num_classes`` (logits size, or None) and ``weights_hash`` (sha256 prefix of its
weights file or state dict), and maps images in the DATA convention — float in [-1, 1], shape
(B, C, H, W) — to ``(features (B, D) float32, logits (B, K) float32 | None)``. All preprocessing
(clamp, dtype, range, channels, resize) happens explicitly in ``preprocess``; large batches are split
into chunks of ``max_batch`` to bound memory.

- ``inception``: torch-fidelity's FID Inception-v3 (2048-d pool3 features, 1008 unbiased logits for
  IS), fed uint8 images as it expects. Weights are never downloaded.
- ``classifier``: a small CNN trained by diffexp on the data module's labelled training split
  (see :mod:`diffexp.metrics.classifier`); the offline default for MNIST/digits/Fashion/CIFAR.
- ``random``: a fixed-seed random conv net, for tests.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from diffexp.metrics.utils import default_cache_dir, file_sha256, state_dict_sha256

INCEPTION_FILENAME = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + INCEPTION_FILENAME


class FeatureExtractor(nn.Module):
    """Base class: ``forward(x in [-1,1]) -> (features, logits | None)`` under ``no_grad``, eval mode."""

    name: str = "extractor"
    num_features: int
    num_classes: int | None = None
    weights_hash: str = ""
    max_batch: int = 256

    @property
    def tag(self) -> str:
        """``name-hash6``, used in metric keys (e.g. ``classifier-ab12cd``)."""
        return f"{self.name}-{self.weights_hash[:6]}"

    def train(self, mode: bool = True) -> FeatureExtractor:  # noqa: ARG002 - always eval
        return super().train(False)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def extract(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if x.dim() != 4:
            raise ValueError(f"expected images (B, C, H, W), got shape {tuple(x.shape)}")
        param = next(self.parameters(), None)
        device = x.device if param is None else param.device
        feats, logits = [], []
        for chunk in x.split(self.max_batch):
            f, lg = self.extract(self.preprocess(chunk.to(device)))
            feats.append(f.float())
            logits.append(None if lg is None else lg.float())
        return torch.cat(feats), None if logits[0] is None else torch.cat(logits)

    def extra_repr(self) -> str:
        return f"name={self.name}, num_features={self.num_features}, weights_hash={self.weights_hash}"


def to_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Grey -> RGB by repetition, RGB -> grey by the channel mean; other mismatches are errors."""
    c = x.shape[1]
    if c == channels:
        return x
    if c == 1:
        return x.expand(-1, channels, -1, -1)
    if channels == 1:
        return x.mean(1, keepdim=True)
    raise ValueError(f"cannot convert {c}-channel images to {channels} channels")


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float -> uint8 exactly as an image saved to PNG: round((x + 1) / 2 * 255), clamped."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


# ---------------------------------------------------------------------------------------- inception
def inception_weights_path(weights_path: str | os.PathLike | None = None) -> Path:
    """Configured path, else ``$TORCH_HOME/hub/checkpoints/weights-inception-2015-12-05-6726825d.pth``."""
    if weights_path is not None:
        return Path(weights_path).expanduser()
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILENAME


def make_inception_standin(path: str | os.PathLike, seed: int = 0) -> Path:
    """Write a *randomly initialised* torch-fidelity Inception state dict (566 keys, same layout as
    the real weights) to ``path`` — for tests only; its features are meaningless.

    ``FeatureExtractorInceptionV3.__init__`` always loads a state dict (from the URL when
    ``feature_extractor_weights_path`` is None); here it is given a path to an empty dict and a
    subclass whose ``load_state_dict`` ignores it, so nothing is downloaded.
    """
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class _NoLoad(FeatureExtractorInceptionV3):
        def load_state_dict(self, *args: Any, **kwargs: Any) -> Any:
            return None

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    empty = path.with_name(path.name + ".empty")
    torch.save({}, empty)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = _NoLoad("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))
    empty.unlink()
    torch.save(nn.Module.state_dict(net), path)
    return path


class InceptionExtractor(FeatureExtractor):
    """torch-fidelity's ``FeatureExtractorInceptionV3`` (the TF FID Inception): features = 2048-d
    pool3, logits = 1008 ``logits_unbiased`` (torch-fidelity's choice for IS).

    Preprocessing: clamp to [-1, 1] -> uint8 (:func:`to_uint8`) -> grey repeated to 3 channels; the
    network then resizes to 299x299 (TF-1 bilinear) and rescales to [-1, 1] itself.
    About 0.3 s per image on a 2-core CPU; ``max_batch`` (default 32) bounds memory.
    """

    name = "inception"
    num_features = 2048
    num_classes = 1008

    def __init__(self, weights_path: str | os.PathLike | None = None, max_batch: int = 32):
        super().__init__()
        path = inception_weights_path(weights_path)
        if not path.is_file():
            from diffexp.errors import MissingFileError

            raise MissingFileError(
                f"FID Inception weights not found at {path}.\n"
                f"Place the file {INCEPTION_FILENAME} (from {INCEPTION_URL}) exactly there, i.e. in "
                f"$TORCH_HOME/hub/checkpoints/ (TORCH_HOME is currently {torch.hub.get_dir()!s}/..), or set "
                f"extractor.weights_path=/path/to/{INCEPTION_FILENAME}. diffexp never downloads it. "
                f"Offline, use extractor=classifier instead."
            )
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        self.net = FeatureExtractorInceptionV3(
            "inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=str(path)
        )
        self.weights_path = str(path)
        self.weights_hash = file_sha256(path)
        self.max_batch = max_batch
        self.eval().requires_grad_(False)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        return to_channels(to_uint8(x), 3).contiguous()

    def extract(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats, logits = self.net(x)
        return feats, logits


# ------------------------------------------------------------------------------------------- random
class RandomExtractor(FeatureExtractor):
    """Fixed-seed random conv net (tests): grey -> 3 channels, 3 conv layers (ReLU, two stride 2),
    global average pool -> ``num_features``; logits = a random linear map to ``num_classes``."""

    name = "random"

    def __init__(self, num_features: int = 64, num_classes: int | None = 10, seed: int = 0, max_batch: int = 256):
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.body = nn.Sequential(
                nn.Conv2d(3, 32, 3, 1, 1), nn.ReLU(), nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(),
                nn.Conv2d(64, num_features, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            )
            self.head = nn.Linear(num_features, num_classes) if num_classes else None
        self.num_features, self.num_classes, self.max_batch = num_features, num_classes, max_batch
        self.weights_hash = state_dict_sha256(self)
        self.eval().requires_grad_(False)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        return to_channels(x.float().clamp(-1, 1), 3)

    def extract(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        f = self.body(x)
        return f, None if self.head is None else self.head(f)


# --------------------------------------------------------------------------------------- classifier
class ClassifierExtractor(FeatureExtractor):
    """Features = penultimate layer, logits = output of a classifier trained by diffexp.

    Preprocessing: clamp to [-1, 1] (the training convention), float32, channels converted to the
    classifier's (:func:`to_channels`), bilinear (antialiased) resize when the size differs from the
    training images. ``weights_hash`` = sha256 prefix of the cached weights file.
    """

    name = "classifier"

    def __init__(self, model: nn.Module, weights_hash: str, info: dict | None = None, max_batch: int = 512):
        super().__init__()
        self.model = model
        self.info = dict(info or {})
        self.weights_hash = weights_hash
        self.num_features, self.num_classes = model.feature_dim, model.num_classes
        self.image_size = tuple(self.info.get("image_size") or ())
        self.max_batch = max_batch
        self.eval().requires_grad_(False)

    @classmethod
    def from_datamodule(cls, datamodule: Any, cache_dir: str | os.PathLike | None = None, *, arch: str = "small_cnn",
                        seed: int = 0, epochs: int | None = None, min_steps: int = 300,
                        min_epochs: int = 4, min_accuracy: float | None = None, **train_kwargs: Any) -> ClassifierExtractor:
        """Load the cached classifier for ``datamodule`` or train it once (see ``load_or_train_classifier``).
        ``min_accuracy``: raise if the recorded test accuracy is below it."""
        from diffexp.metrics.classifier import load_or_train_classifier

        if getattr(datamodule, "num_classes", None) is None:
            raise ValueError(f"the classifier extractor needs a labelled data module; "
                             f"{getattr(datamodule, 'name', datamodule)!r} has num_classes=None "
                             f"(use extractor=random or extractor=inception)")
        model, info, path = load_or_train_classifier(
            datamodule, cache_dir or default_cache_dir(), arch=arch, epochs=epochs, min_steps=min_steps,
            min_epochs=min_epochs, seed=seed, **train_kwargs)
        acc = info.get("test_accuracy")
        if min_accuracy is not None and (acc is None or acc < min_accuracy):
            raise RuntimeError(f"classifier {path} has test accuracy {acc}, below min_accuracy={min_accuracy}")
        info["path"] = str(path)
        return cls(model, info["weights_sha256"], info)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        x = to_channels(x.float().clamp(-1, 1), self.model.in_channels)
        if self.image_size and tuple(x.shape[2:]) != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False, antialias=True)
        return x

    def extract(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.features_and_logits(x)


# ----------------------------------------------------------------------------------------- factory
def make_extractor(name: str, datamodule: Any = None, **kwargs: Any) -> FeatureExtractor:
    """Build an extractor by name: ``inception`` (kwargs: weights_path, max_batch), ``classifier``
    (needs ``datamodule``; kwargs: cache_dir, arch, seed, epochs, min_steps, min_accuracy, ...),
    ``random`` (kwargs: num_features, num_classes, seed)."""
    if name == "inception":
        return InceptionExtractor(**kwargs)
    if name == "random":
        return RandomExtractor(**kwargs)
    if name == "classifier":
        if datamodule is None:
            raise ValueError("extractor 'classifier' needs the data module: build_extractor(cfg, datamodule)")
        return ClassifierExtractor.from_datamodule(datamodule, **kwargs)
    raise ValueError(f"unknown extractor {name!r} (inception | classifier | random)")


def build_extractor(cfg: Any, datamodule: Any = None) -> FeatureExtractor:
    """Instantiate ``cfg.extractor`` (a Hydra node with ``_partial_: true``) and bind the data module.
    Also accepts a ready extractor or a name string."""
    if isinstance(cfg, FeatureExtractor):
        return cfg
    if isinstance(cfg, str):
        return make_extractor(cfg, datamodule)
    from hydra.utils import instantiate

    obj = instantiate(cfg)
    return obj if isinstance(obj, FeatureExtractor) else obj(datamodule=datamodule)
