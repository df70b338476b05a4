"""Data: class vocabularies, ImageNet-style image folders with the latent cache, and the random streams of a run."""
