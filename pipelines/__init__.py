"""DiT models, data, sampling and the erase-class pipeline."""
import os

# MKL's conditional numerical reproducibility: CPU results no longer depend on memory alignment, so the same command
# with the same seed on the same machine gives the same weights bit for bit (set before torch loads MKL).
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
