"""Solvers for the continuous problem (9); each holds only its hyperparameters."""

from .fixed_point import FixedPoint
from .gradient import ProjectedGradient, ScaledGradient
from .newton import AggregateNewton
from .projected_newton import ProjectedNewton

METHODS = {
    "newton": AggregateNewton,
    "fixed-point": FixedPoint,
    "gradient": ProjectedGradient,
    "scaled-gradient": ScaledGradient,
    "projected-newton": ProjectedNewton,
}

__all__ = ["METHODS", "AggregateNewton", "FixedPoint", "ProjectedGradient", "ProjectedNewton", "ScaledGradient"]
