"""Shared by the diffusers test files: tiny diffusers networks (8x8 digits) and a few-step training config."""

from __future__ import annotations

TINY_UNET_KW = dict(block_out_channels=(8, 16), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                    up_block_types=("AttnUpBlock2D", "UpBlock2D"), layers_per_block=1, norm_num_groups=4,
                    attention_head_dim=8)
TINY_UNET = ["model=diffusers_unet", "model.block_out_channels=[8,16]",
             "model.down_block_types=[DownBlock2D,AttnDownBlock2D]", "model.up_block_types=[AttnUpBlock2D,UpBlock2D]",
             "model.norm_num_groups=4", "model.attention_head_dim=8"]
TINY_DIT = ["model=diffusers_dit", "model.num_attention_heads=2", "model.attention_head_dim=8", "model.num_layers=1",
            "model.patch_size=2"]
TRAIN = ["data=digits", "data.subset=64", "data.batch_size=8", "schedule.num_timesteps=50", "trainer.max_steps=4",
         "trainer.val_check_interval=4", "trainer.limit_val_batches=1", "logger=none", "~callbacks.sample",
         "~callbacks.progress_bar", "~callbacks.lr_monitor", "print_config=false", "trainer.enable_progress_bar=false",
         "trainer.enable_model_summary=false"]

