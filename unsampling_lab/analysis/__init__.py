"""Measuring inversions: metrics (known-answer statistics), sweeps (grids sharing one inversion per setting), plots."""
