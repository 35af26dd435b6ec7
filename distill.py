"""Distil a teacher into a few-step student: python distill.py teacher=CKPT method=progressive|consistency_distillation|consistency_training (see README)."""

from diffexp.cli.distill import main

if __name__ == "__main__":
    main()
