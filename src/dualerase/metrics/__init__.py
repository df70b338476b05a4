"""Scoring samples: the digits classifier, FID through torch-fidelity, the ImageNet evaluation."""
