"""Presets: small YAML files that say only what differs from the schema's defaults (pipelines/config.py)."""
from pathlib import Path

PRESETS_DIR = Path(__file__).parent


def preset_names() -> list[str]:
    """Names of the shipped presets."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))
