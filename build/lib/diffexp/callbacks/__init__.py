from diffexp.callbacks.likelihood import NLLCallback
from diffexp.callbacks.metrics import MetricsCallback, PointsExtractor
from diffexp.callbacks.sample import SampleCallback, sampler_label

__all__ = ["MetricsCallback", "NLLCallback", "PointsExtractor", "SampleCallback", "sampler_label"]
