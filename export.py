"""Export a checkpoint: python export.py ckpt_path=... format=diffusers|safetensors out=DIR"""

from diffexp.cli.export import main

if __name__ == "__main__":
    main()
