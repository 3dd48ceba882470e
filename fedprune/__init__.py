"""fedprune: federated personalized-pruning simulator built on Flower."""

__version__ = "0.1.0"
