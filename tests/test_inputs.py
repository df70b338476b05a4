"""Inputs that used to give wrong numbers silently: odd image formats, stray folders, caches keyed by path."""
import json

import numpy as np
import pytest
from PIL import Image

from pipelines import fid_reference
from pipelines.data import load_images


def _png16(path, value):
    Image.fromarray(np.asarray(value, dtype=np.uint16)).save(path)
    assert Image.open(path).mode == "I;16"
    return path


def test_16_bit_pngs_decode_at_their_grey_level(tmp_path):
    ramp = np.tile(np.array([0, 65535 // 2, 65535], dtype=np.uint16).repeat(4), (12, 1))  # black, mid-grey, white
    images, kept = load_images([_png16(tmp_path / "ramp.png", ramp), _png16(tmp_path / "grey.png",
                                np.full((9, 9), 32768))], 12, 3, "test", progress=False)
    assert kept == [0, 1]
    pixels = ((images + 1) * 127.5).round()
    assert pixels[0, :, 6, :4].eq(0).all() and pixels[0, :, 6, 8:].eq(255).all()
    assert pixels[0, :, 6, 5:7].sub(127.5).abs().max() <= 1 and pixels[1].sub(128).abs().max() <= 1


def test_fid_reference_writes_16_bit_pngs_at_their_grey_level(tmp_path):
    (tmp_path / "train" / "n01440764").mkdir(parents=True)
    _png16(tmp_path / "train" / "n01440764" / "a.png", np.full((20, 20), 16384))  # a quarter grey: 64
    assert fid_reference.main(["--data", str(tmp_path / "train"), "--output", str(tmp_path / "ref"), "--size", "8",
                               "--quiet"]) == 0
    out = np.asarray(Image.open(tmp_path / "ref" / "n01440764" / "a.png"))
    assert out.shape == (8, 8, 3) and abs(int(out.max()) - 64) <= 1 and abs(int(out.min()) - 64) <= 1
