"""Sample-quality metrics for diffexp: FID, KID and Inception Score with pluggable feature extractors.

Typical use::

    from diffexp.metrics import build_extractor, reference_stats, compute_metrics, keyed_metrics
    extractor = build_extractor(cfg.extractor, datamodule)            # inception | classifier | random
    real = reference_stats(datamodule, "test", extractor, n=10_000)   # cached on disk
    res = compute_metrics(lambda seeds: sampler(denoiser, shape=shape, seeds=seeds), 10_000, extractor, real,
                          batch_size=250, sampler=sampler.name, nfe=sampler.nfe(T), ema=True)
    logger.log_metrics(keyed_metrics(res))   # {"fid/classifier-ab12cd/n10000/ddim-50/ema/ref-test-n10000": ...} (+ process family when res names it)

See :mod:`diffexp.metrics.stats` for the memory model and DDP behaviour, :mod:`diffexp.metrics.provenance`
for keys and records, :mod:`diffexp.metrics.selection` for the choice of metrics, extractor and reference
split for a data module, :mod:`diffexp.metrics.nll` for the likelihood bound on a data set and
:mod:`diffexp.metrics.summary` for the tables and plots of an evaluation sweep.
"""

from diffexp.metrics.classifier import SmallCNN, build_classifier, load_or_train_classifier, train_classifier
from diffexp.metrics.evaluate import (
    SampleQuality,
    compare_stats,
    compute_metrics,
    extract_into,
    global_sample_order,
    reference_stats,
    reference_stats_path,
)
from diffexp.metrics.extractors import (
    INCEPTION_FILENAME,
    ClassifierExtractor,
    FeatureExtractor,
    InceptionExtractor,
    RandomExtractor,
    build_extractor,
    inception_weights_path,
    make_extractor,
    make_inception_standin,
)
from diffexp.metrics.provenance import keyed_metrics, provenance_key
from diffexp.metrics.stats import (
    FeatureAccumulator,
    FeatureStats,
    frechet_distance,
    inception_score,
    inception_score_from_sums,
    kernel_inception_distance,
    polynomial_mmd2,
    psd_sqrt,
    sliced_wasserstein,
)
from diffexp.metrics.utils import default_cache_dir

__all__ = [
    "INCEPTION_FILENAME", "ClassifierExtractor", "FeatureAccumulator", "FeatureExtractor", "FeatureStats",
    "InceptionExtractor", "RandomExtractor", "SampleQuality", "SmallCNN", "build_classifier", "build_extractor",
    "compare_stats", "compute_metrics", "default_cache_dir", "extract_into", "frechet_distance", "global_sample_order", "inception_score",
    "inception_score_from_sums", "inception_weights_path", "kernel_inception_distance", "keyed_metrics",
    "load_or_train_classifier", "make_extractor", "make_inception_standin", "polynomial_mmd2", "provenance_key",
    "psd_sqrt", "reference_stats", "reference_stats_path", "sliced_wasserstein", "train_classifier",
]
