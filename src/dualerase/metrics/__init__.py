"""Scoring samples: the digits classifier, FID through torch-fidelity, the published ImageNet evaluation."""
