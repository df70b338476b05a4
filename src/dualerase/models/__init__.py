"""Models: DiT as diffusers models it, its losses, pretrained loading and saving, the digits DiT."""
