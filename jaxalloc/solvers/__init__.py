"""Solvers for the continuous problem (9); each holds only its hyperparameters."""

from .fixed_point import FixedPoint
from .gradient import ProjectedGradient, ScaledGradient
from .newton import AggregateNewton

METHODS = {
    "newton": AggregateNewton,
    "fixed-point": FixedPoint,
    "gradient": ProjectedGradient,
    "scaled-gradient": ScaledGradient,
}

__all__ = ["AggregateNewton", "FixedPoint", "ProjectedGradient", "ScaledGradient", "METHODS"]
