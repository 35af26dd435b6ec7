"""Few-step generation: progressive distillation (Salimans & Ho 2022), consistency distillation and
consistency training (Song et al. 2023; improved CT, Song & Dhariwal 2023). See docs/distill.md."""

from diffexp.distill.consistency import (
    DISTANCES,
    consistency_distillation_loss,
    consistency_training_loss,
    ict_level_probabilities,
    ict_num_levels,
    karras_levels,
)
from diffexp.distill.objectives import ConsistencyDistillation, ConsistencyTraining, ProgressiveDistillation
from diffexp.distill.parameterization import ConsistencyParameterization, consistency_coefficients
from diffexp.distill.progressive import pd_grid, pd_loss, pd_target

__all__ = [
    "ConsistencyDistillation",
    "ConsistencyTraining",
    "ProgressiveDistillation",
    "DISTANCES",
    "ConsistencyParameterization",
    "consistency_coefficients",
    "consistency_distillation_loss",
    "consistency_training_loss",
    "ict_level_probabilities",
    "ict_num_levels",
    "karras_levels",
    "pd_grid",
    "pd_loss",
    "pd_target",
]
