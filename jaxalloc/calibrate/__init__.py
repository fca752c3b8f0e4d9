"""Calibration: measure a model under enforced thinking budgets, and fit a profile to the measurements."""
