"""Evaluate a checkpoint: python evaluate.py ckpt_path=... sampler=ddim sampler.steps=50 metrics=[fid,kid,nll]
Sweep: python evaluate.py -m ckpt_path=... sampler=ddim,dpmpp_2m,heun sampler.steps=10,20,50"""

from diffexp.cli.evaluate import main

if __name__ == "__main__":
    main()
