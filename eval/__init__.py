"""Sampling and evaluation: samplers over a clean prefix, cascade sampling, metrics and the paper tables."""
