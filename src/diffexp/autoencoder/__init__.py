"""First stage of latent diffusion: the KL-regularised autoencoder, its training module and its loader."""

from diffexp.autoencoder.distribution import DiagonalGaussian
from diffexp.autoencoder.load import autoencoder_hash, build_autoencoder, load_autoencoder
from diffexp.autoencoder.module import AutoencoderModule, estimate_scale_factor, reconstruction_loss
from diffexp.autoencoder.networks import KLAutoencoder

__all__ = ["AutoencoderModule", "DiagonalGaussian", "KLAutoencoder", "autoencoder_hash", "build_autoencoder",
           "estimate_scale_factor", "load_autoencoder", "reconstruction_loss"]
