"""DiT models, data, sampling and the erase-class pipeline."""
