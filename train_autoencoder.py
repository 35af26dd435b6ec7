"""Train the first-stage autoencoder of latent diffusion: python train_autoencoder.py [autoencoder=kl_f4 ...] (see README)."""

from diffexp.cli.train_autoencoder import main

if __name__ == "__main__":
    main()
