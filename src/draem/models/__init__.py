"""Network definitions, free of training concerns."""

from draem.models.draem import DiscriminativeSubNetwork, DraemModel, ReconstructiveSubNetwork

__all__ = ["DiscriminativeSubNetwork", "DraemModel", "ReconstructiveSubNetwork"]
