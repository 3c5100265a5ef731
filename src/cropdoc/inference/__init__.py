"""Inference: bundles of a trained model run on new photos (torch and ONNX Runtime),
explained (heatmaps) and exported."""
