"""The digits classifier's "not a digit" junk, and the perturbations it still sees a digit through.

The junk is seeded and synthetic: blanks, noise, stripes, grids and blobs. The perturbations are
shifts, rotations, scaling, blur and thicker strokes, and junk overlays.

Images are (N, 1, 8, 8) floats in [-1, 1], -1 the blank background. Junk comes only from `junk` and
its seed, never from an erased model, so the classifier knows nothing of what any erasure produces.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SIZE = 8
NOT_A_DIGIT = 10  # the digits classifier's class index of "not a digit"
# the validation sets' junk: never a seed the classifier's training draws from
VALIDATION_SEED = 20_250_715
JUNK_KINDS = ("blank", "noise", "stripes", "grid", "blobs")


def _uniform(n: int, low: float, high: float, gen: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=gen)


def _coords() -> tuple[torch.Tensor, torch.Tensor]:
    r = torch.arange(SIZE, dtype=torch.float32)
    return r.view(SIZE, 1).expand(SIZE, SIZE), r.view(1, SIZE).expand(SIZE, SIZE)


def _levels(pattern: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A pattern in [0, 1] mapped between a random low and high grey level."""
    n = len(pattern)
    low = _uniform(n, -1.0, 0.2, gen).view(n, 1, 1)
    high = low + _uniform(n, 0.3, 2.0, gen).view(n, 1, 1)
    return (low + (high - low) * pattern).clamp(-1, 1)


def _blank(n: int, gen: torch.Generator) -> torch.Tensor:
    return _uniform(n, -1.0, 1.0, gen).view(n, 1, 1).expand(n, SIZE, SIZE).clone()


def _noise(n: int, gen: torch.Generator) -> torch.Tensor:
    return _levels(torch.rand(n, SIZE, SIZE, generator=gen), gen)


def _stripes(n: int, gen: torch.Generator) -> torch.Tensor:
    """Parallel stripes at a random angle, period (2 to 4 pixels) and phase."""
    i, j = _coords()
    angle = _uniform(n, 0.0, math.pi, gen).view(n, 1, 1)
    period = _uniform(n, 2.0, 4.0, gen).view(n, 1, 1)
    phase = _uniform(n, 0.0, 2 * math.pi, gen).view(n, 1, 1)
    wave = torch.cos(2 * math.pi * (i * torch.cos(angle) + j * torch.sin(angle)) / period + phase)
    return _levels((wave > 0).float(), gen)


def _grid(n: int, gen: torch.Generator) -> torch.Tensor:
    """Dots or crossing lines every 2 or 3 pixels, at a random offset: what erased digits become."""
    i, j = _coords()
    period = torch.randint(2, 4, (n, 1, 1), generator=gen).float()
    oi, oj = (torch.randint(0, 3, (n, 1, 1), generator=gen).float() for _ in range(2))
    on_i, on_j = ((i + oi) % period == 0), ((j + oj) % period == 0)
    lines = torch.rand(n, 1, 1, generator=gen) < 0.5
    return _levels(torch.where(lines, on_i | on_j, on_i & on_j).float(), gen)


def _blobs(n: int, gen: torch.Generator) -> torch.Tensor:
    """One to three round blobs of random place and size."""
    i, j = _coords()
    image = torch.zeros(n, SIZE, SIZE)
    count = torch.randint(1, 4, (n,), generator=gen)
    for k in range(3):
        ci, cj = (_uniform(n, -0.5, SIZE - 0.5, gen).view(n, 1, 1) for _ in range(2))
        sigma = _uniform(n, 0.6, 1.8, gen).view(n, 1, 1)
        blob = torch.exp(-((i - ci) ** 2 + (j - cj) ** 2) / (2 * sigma ** 2))
        image = torch.maximum(image, blob * (k < count).view(n, 1, 1))
    return _levels(image, gen)


MAKERS = {"blank": _blank, "noise": _noise, "stripes": _stripes, "grid": _grid, "blobs": _blobs}


def junk(n: int, gen: torch.Generator) -> torch.Tensor:
    """`n` junk images, each of a kind drawn uniformly from JUNK_KINDS."""
    kinds = torch.randint(0, len(JUNK_KINDS), (n,), generator=gen)
    out = torch.empty(n, SIZE, SIZE)
    for k, name in enumerate(JUNK_KINDS):
        chosen = (kinds == k).nonzero().flatten()
        if len(chosen):
            out[chosen] = MAKERS[name](len(chosen), gen)
    return out.unsqueeze(1)


def affine(x: torch.Tensor, degrees: torch.Tensor, scale: torch.Tensor,
           shift: torch.Tensor) -> torch.Tensor:
    """Each image rotated by `degrees`, scaled by `scale` about its centre, shifted by `shift`.

    `shift` is (N, 2) pixels (right, down); what moves in from outside is background."""
    a = torch.deg2rad(degrees)
    theta = torch.stack([
        torch.stack([torch.cos(a) / scale, -torch.sin(a) / scale, -2 * shift[:, 0] / SIZE], 1),
        torch.stack([torch.sin(a) / scale, torch.cos(a) / scale, -2 * shift[:, 1] / SIZE], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x + 1, grid, align_corners=False) - 1  # x + 1's zero padding: background


def shifted(x: torch.Tensor, right: int, down: int) -> torch.Tensor:
    """Every image moved by whole pixels, `right` and `down`."""
    n = len(x)
    return affine(x, torch.zeros(n), torch.ones(n),
                  torch.tensor([[right, down]], dtype=torch.float32).expand(n, 2))


def blurred(x: torch.Tensor) -> torch.Tensor:
    """A 3x3 binomial blur."""
    k = torch.tensor([1.0, 2.0, 1.0])
    kernel = (k[:, None] * k[None, :] / 16).view(1, 1, 3, 3)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), value=-1.0), kernel)


def thickened(x: torch.Tensor) -> torch.Tensor:
    """Strokes grown by half a pixel each way: the mean of the image and its 3x3 dilation."""
    return (x + F.max_pool2d(x, 3, stride=1, padding=1)) / 2


def overlaid(x: torch.Tensor, junk_images: torch.Tensor,
             weight: float | torch.Tensor) -> torch.Tensor:
    """Digits blended with junk: (1 - weight) digit + weight junk."""
    return (1 - weight) * x + weight * junk_images


def augment(x: torch.Tensor, recipe, gen: torch.Generator) -> torch.Tensor:
    """A random view of each digit for training, drawn from `gen` as a `ClassifierRecipe` asks.

    A recipe.stroke_share of them blurred or thickened (half each), then every one shifted by up to
    recipe.shift whole pixels, rotated by up to recipe.rotate degrees and scaled by up to
    recipe.scale either way, and a recipe.overlay_share of them blended with junk at a weight drawn
    up to recipe.overlay_weight."""
    n = len(x)
    stroke = torch.rand(n, generator=gen)
    out = torch.where((stroke < recipe.stroke_share / 2).view(n, 1, 1, 1), blurred(x), x)
    out = torch.where(((stroke >= recipe.stroke_share / 2)
                       & (stroke < recipe.stroke_share)).view(n, 1, 1, 1), thickened(x), out)
    shift = torch.randint(-recipe.shift, recipe.shift + 1, (n, 2), generator=gen).float()
    degrees = _uniform(n, -recipe.rotate, recipe.rotate, gen)
    scale = 1 + _uniform(n, -recipe.scale, recipe.scale, gen)
    out = affine(out, degrees, scale, shift)
    blend = (torch.rand(n, generator=gen) < recipe.overlay_share).float()
    weight = blend * _uniform(n, 0.0, recipe.overlay_weight, gen)
    return overlaid(out, junk(n, gen), weight.view(n, 1, 1, 1))


def validation_sets(x: torch.Tensor,
                    y: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The fixed sets the "not a digit" rule is validated on, from held-out digits `x`, `y`.

    Returns name -> (images, labels), NOT_A_DIGIT the label of pure junk. Overlays and blends keep
    the digit's label: it stays readable."""
    gen = torch.Generator().manual_seed(VALIDATION_SEED)
    n = len(x)
    textures = torch.cat([_stripes(n, gen), _grid(n, gen)]).unsqueeze(1)[
        torch.randperm(2 * n, generator=gen)[:n]]
    turned = [affine(x, torch.full((n,), d), torch.ones(n), torch.zeros(n, 2))
              for d in (15.0, -15.0)]
    return {
        "held-out digits": (x, y),
        "shifted 1 pixel (4 ways)": (
            torch.cat([shifted(x, a, b) for a, b in ((1, 0), (-1, 0), (0, 1), (0, -1))]),
            y.repeat(4)),
        "rotated 15 degrees (both ways)": (torch.cat(turned), y.repeat(2)),
        "blurred (3x3)": (blurred(x), y),
        "thicker strokes": (thickened(x), y),
        "texture overlay (stripes or grid, weight 0.3)": (overlaid(x, textures, 0.3), y),
        "blended 60/40 with junk": (overlaid(x, junk(n, gen), 0.4), y),
        "pure junk": (junk(2000, gen), torch.full((2000,), NOT_A_DIGIT)),
    }
