from diffexp.callbacks.sample import SampleCallback, sampler_label

__all__ = ["SampleCallback", "sampler_label"]
