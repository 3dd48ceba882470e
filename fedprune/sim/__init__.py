"""Experiment runner and CLI on Flower's simulation engine."""
