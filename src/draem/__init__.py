"""DRAEM and its family of surface-anomaly detectors: train on defect-free images, flag and localise defects."""

from draem.api import Detector, Draem, Prediction

__version__ = "0.1.0"
__all__ = ["Detector", "Draem", "Prediction", "__version__"]
