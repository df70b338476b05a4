"""Evaluation: the digits classifier, forget/retain accuracy, FID through torch-fidelity, reports."""
