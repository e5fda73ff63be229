"""DSR (Zavrtanik, Kristan, Skočaj, ECCV 2022): anomaly detection by dual subspace re-projection.

Two methods: `dsr` (the whole model, in three stages) and `dsr-general` (its general appearance model alone).
"""

from draem.methods.dsr.anomalies import latent_anomalies
from draem.methods.dsr.general import DsrGeneralModel, DsrGeneralOptions
from draem.methods.dsr.model import DsrModel, DsrOptions

__all__ = ["DsrGeneralModel", "DsrGeneralOptions", "DsrModel", "DsrOptions", "latent_anomalies"]
