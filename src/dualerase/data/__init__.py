"""Data: class vocabularies, image folders and the latent cache, random streams, the FID set."""
