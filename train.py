"""Train a diffusion model: python train.py [group=option ...] [key=value ...] (see README)."""

from diffexp.cli.train import main

if __name__ == "__main__":
    main()
