"""Sample from a checkpoint: python sample.py ckpt_path=... sampler=ddim sampler.steps=50 num_samples=1000 seed=0"""

from diffexp.cli.sample import main

if __name__ == "__main__":
    main()
