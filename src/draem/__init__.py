"""DRAEM surface-anomaly detection: train on defect-free images, flag and localise defects."""

from draem.api import Draem, Prediction

__version__ = "0.1.0"
__all__ = ["Draem", "Prediction", "__version__"]
