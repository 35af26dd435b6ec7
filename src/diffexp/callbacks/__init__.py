"""Lightning callbacks. They depend on the libraries (diffexp.metrics, diffexp.likelihood, ...), never on the CLIs,
and the libraries and CLIs never on them."""

from diffexp.callbacks.likelihood import NLLCallback
from diffexp.callbacks.metrics import MetricsCallback
from diffexp.callbacks.sample import SampleCallback

__all__ = ["MetricsCallback", "NLLCallback", "SampleCallback"]
