"""OCR-GAN (Liang et al., IEEE TIP 2023): omni-frequency reconstruction with channel selection, and its ablation."""

from draem.methods.ocrgan.frequency import decouple
from draem.methods.ocrgan.model import OcrGanModel, OcrGanOptions, discriminator_loss, generator_loss, ocrgan_score

__all__ = ["OcrGanModel", "OcrGanOptions", "decouple", "discriminator_loss", "generator_loss", "ocrgan_score"]
