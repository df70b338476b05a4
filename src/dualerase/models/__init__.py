"""DiT as diffusers models it, its training loss, pretrained loading and saving, and the embedded digits DiT."""
