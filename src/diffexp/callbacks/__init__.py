from diffexp.callbacks.sample import SampleCallback

__all__ = ["SampleCallback"]
