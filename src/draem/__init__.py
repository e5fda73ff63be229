"""DRAEM surface-anomaly detection: train on defect-free images, flag and localise defects."""

__version__ = "0.1.0"
