"""Running fedprune on Flower's deployment engine: run-config checks and a long-running ClientApp executor."""
