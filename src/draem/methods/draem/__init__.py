"""DRAEM (Zavrtanik, Kristan, Skočaj, ICCV 2021) and the configurations of its ablation study."""

from draem.methods.draem.model import DraemModel, DraemOptions, draem_loss

__all__ = ["DraemModel", "DraemOptions", "draem_loss"]
