"""Post-hoc EMA of a finished run: python ema.py ckpt_dir=<run dir> sigma_rel=0.05,0.1,0.2 (see README)."""

import sys

from diffexp.cli.ema import main

if __name__ == "__main__":
    sys.exit(main())
