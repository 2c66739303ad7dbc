"""Datasets: the on-store layout, importers/exporters and the SynthDrive generator."""
