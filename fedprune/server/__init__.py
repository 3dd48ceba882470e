"""The Flower ServerApp: rounds, evaluation, run records."""
