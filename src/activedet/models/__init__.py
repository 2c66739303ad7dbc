"""Detectors: presets (a registry), checkpoints, inference and training."""
