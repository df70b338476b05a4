import os

os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")  # as pipelines/__init__.py: bitwise-reproducible CPU results

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test shares one throw-away cache: prepared models never leak into the user's ~/.cache."""
    monkeypatch.setenv("DUALERASE_HOME", str(tmp_path_factory.getbasetemp() / "dualerase-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def tiny_dit():
    from pipelines.dit import build_dit

    torch.manual_seed(0)
    return build_dit(num_classes=5, sample_size=4, in_channels=1, patch_size=2, layers=2, heads=2, head_dim=8)
