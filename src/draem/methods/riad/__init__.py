"""RIAD (Zavrtanik, Kristan, Skočaj, Pattern Recognition 2021): anomaly detection by reconstruction by inpainting."""

from draem.methods.riad.model import RiadModel, RiadOptions, fixed_masks, inpaint, inpainting_masks, riad_loss

__all__ = ["RiadModel", "RiadOptions", "fixed_masks", "inpaint", "inpainting_masks", "riad_loss"]
