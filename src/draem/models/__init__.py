"""Network definitions, free of training concerns."""

from draem.models.draem import DiscriminativeSubNetwork, Draem, ReconstructiveSubNetwork

__all__ = ["DiscriminativeSubNetwork", "Draem", "ReconstructiveSubNetwork"]
