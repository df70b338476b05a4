"""The digits classifier: it scores samples' forget and retain accuracy, and gives FID's features.

Its ten digit classes are trained on shifted, rotated, scaled, blurred or thickened and
junk-overlaid views of the train split, and an eleventh class, "not a digit" (NOT_A_DIGIT), on
synthetic junk (`not_a_digit.py`): forget accuracy is then the share of samples whose top class is
the erased digit, and a sample that is no digit at all has a class of its own."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import torch
from annotated_types import Ge, Gt, Le
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from dualerase.metrics.not_a_digit import NOT_A_DIGIT, augment, junk

FEATURE_DIM = 64


class DigitsNet(nn.Module):
    """A small CNN for 1x8x8 digits in [-1, 1]; `features` is its 64-d penultimate layer."""

    def __init__(self, num_classes: int = 11):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * 2 * 2, FEATURE_DIM), nn.ReLU())
        self.head = nn.Linear(FEATURE_DIM, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The 64-d penultimate features of each image."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The class logits of each image."""
        return self.head(self.body(x))


@dataclass
class ClassifierRecipe:
    """The config's `classifier` group: how the digits classifier is trained.

    It trains on the fixed train split and reports its accuracy on the test split; the cached
    classifier is keyed by every value, so changing one retrains it once."""

    epochs: Annotated[int, Gt(0)] = 60
    batch_size: Annotated[int, Gt(0)] = 64
    lr: Annotated[float, Gt(0)] = 1e-3
    # std of Gaussian pixel noise added in training, for robustness to samples
    noise_augment: Annotated[float, Ge(0)] = 0.1
    # an 11th class, "not a digit", trained on junk (false: the ten digits alone)
    not_a_digit: bool = True
    junk_share: Annotated[float, Ge(0)] = 0.5  # junk images in each batch, per digit image
    # digits blurred or with thicker strokes (half each)
    stroke_share: Annotated[float, Ge(0), Le(1)] = 0.2
    shift: Annotated[int, Ge(0)] = 1  # digits shifted by up to this many whole pixels each way
    rotate: Annotated[float, Ge(0)] = 15.0  # and rotated by up to this many degrees
    scale: Annotated[float, Ge(0), Le(0.5)] = 0.1  # and scaled by up to this share either way
    # this share of the digits is blended with junk at a weight drawn up to overlay_weight,
    # keeping its label
    overlay_share: Annotated[float, Ge(0), Le(1)] = 0.3
    overlay_weight: Annotated[float, Ge(0), Le(1)] = 0.4
    seed: int = 0


def train_classifier(x: torch.Tensor, y: torch.Tensor, recipe: ClassifierRecipe,
                     progress: bool = True) -> DigitsNet:
    """Train DigitsNet on digits `x` labelled `y`, with Adam; returns it in eval mode.

    The digits are augmented (`not_a_digit.augment`) and get light pixel noise; with
    `recipe.not_a_digit`, junk labelled NOT_A_DIGIT joins every batch."""
    torch.manual_seed(recipe.seed)
    net = DigitsNet(NOT_A_DIGIT + 1 if recipe.not_a_digit else NOT_A_DIGIT)
    opt = torch.optim.Adam(net.parameters(), lr=recipe.lr)
    gen = torch.Generator().manual_seed(recipe.seed)
    for _ in tqdm(range(recipe.epochs), desc="train digits classifier", disable=not progress):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), recipe.batch_size):
            idx = order[i:i + recipe.batch_size]
            xb, yb = augment(x[idx], recipe, gen), y[idx]
            if recipe.not_a_digit:
                extra = round(recipe.junk_share * len(idx))
                xb = torch.cat([xb, junk(extra, gen)])
                yb = torch.cat([yb, torch.full((extra,), NOT_A_DIGIT)])
            xb = xb + recipe.noise_augment * torch.randn(xb.shape, generator=gen)
            loss = nn.functional.cross_entropy(net(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return net.eval()


@torch.no_grad()
def predict(net: nn.Module, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Predicted class of each image in [-1, 1]."""
    net.eval()
    return torch.cat([net(images[i:i + batch_size]).argmax(1)
                      for i in range(0, len(images), batch_size)])


@torch.no_grad()
def probabilities(net: nn.Module, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Softmax class probabilities of each image in [-1, 1]."""
    net.eval()
    return torch.cat([net(images[i:i + batch_size]).softmax(1)
                      for i in range(0, len(images), batch_size)])


def accuracy(net: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of images classified as their label (NaN without images)."""
    return (predict(net, images) == labels).float().mean().item() if len(labels) else float("nan")


def save_classifier(net: DigitsNet, path: Path, recipe: ClassifierRecipe,
                    test_accuracy: float) -> None:
    """Save the weights as safetensors, with the recipe and test accuracy as metadata."""
    metadata = {"recipe": str(asdict(recipe)), "test_accuracy": str(test_accuracy)}
    save_file(net.state_dict(), str(path), metadata=metadata)


def load_classifier(path: Path) -> DigitsNet:
    """A classifier `save_classifier` wrote (with the classes it was saved with), in eval mode."""
    state = load_file(str(path))
    # 10 classes for a classifier trained before "not a digit"
    net = DigitsNet(len(state["head.bias"]))
    net.load_state_dict(state)
    return net.eval()
