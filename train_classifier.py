"""Train the noise-conditional classifier of classifier guidance: python train_classifier.py [data=mnist process=ddpm ...]."""

from diffexp.cli.train_classifier import main

if __name__ == "__main__":
    main()
