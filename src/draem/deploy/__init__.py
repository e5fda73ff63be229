"""Deployment: the authors' checkpoints, ONNX export and inference back-ends."""
