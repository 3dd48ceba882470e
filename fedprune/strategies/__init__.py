"""Aggregation rules: Flower Strategy subclasses."""

from fedprune.strategies.dense import DenseFedAvg
from fedprune.strategies.masked import MaskedFedAvg, masked_mean
from fedprune.strategies.personalized import PersonalizedStrategy

__all__ = ["DenseFedAvg", "MaskedFedAvg", "PersonalizedStrategy", "masked_mean"]
