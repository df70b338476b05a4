"""Model-agnostic class unlearning: DualOptim's alternating forget/retain updates, saliency masks, base methods."""
from erase.dualoptim import DivergenceError, EraseConfig, alpha_at, make_optimizers, unlearn
from erase.saliency import fisher_diagonal, sfron_mask

__all__ = [
    "DivergenceError",
    "EraseConfig",
    "alpha_at",
    "fisher_diagonal",
    "make_optimizers",
    "sfron_mask",
    "unlearn",
]
