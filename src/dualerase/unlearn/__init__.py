"""Model-agnostic class unlearning: DualOptim's alternating updates, saliency masks, base methods.

With your own model and data, Algorithm 1 with a base method's losses (ga, sfron, salun, sa) and
its mask:

    unlearn(model, METHODS["sfron"](...), forget_batches, retain_batches, EraseConfig())
"""
from dualerase.unlearn.dualoptim import (
    DivergenceError,
    EraseConfig,
    alpha_at,
    make_optimizers,
    unlearn,
)
from dualerase.unlearn.methods import METHODS, Method, MethodConfig
from dualerase.unlearn.saliency import fisher_diagonal, sfron_mask

__all__ = [
    "METHODS",
    "DivergenceError",
    "EraseConfig",
    "Method",
    "MethodConfig",
    "alpha_at",
    "fisher_diagonal",
    "make_optimizers",
    "sfron_mask",
    "unlearn",
]
