"""Anomaly simulation: Perlin masks, anomaly-source textures and their augmentation."""
