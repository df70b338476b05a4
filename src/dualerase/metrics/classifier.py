"""The digits classifier: scores forget and retain accuracy of samples, and gives the features FID is computed on."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import torch
from annotated_types import Ge, Gt
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

FEATURE_DIM = 64


class DigitsNet(nn.Module):
    """A small CNN for 1x8x8 digits in [-1, 1]; `features` is its 64-d penultimate layer."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(64 * 2 * 2, FEATURE_DIM), nn.ReLU())
        self.head = nn.Linear(FEATURE_DIM, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@dataclass
class ClassifierRecipe:
    """How the digits classifier is trained (on the fixed train split; accuracy reported on the test split)."""

    epochs: Annotated[int, Gt(0)] = 30
    batch_size: Annotated[int, Gt(0)] = 64
    lr: Annotated[float, Gt(0)] = 1e-3
    # std of Gaussian pixel noise added in training, for robustness to samples
    noise_augment: Annotated[float, Ge(0)] = 0.1
    seed: int = 0


def train_classifier(x: torch.Tensor, y: torch.Tensor, recipe: ClassifierRecipe, progress: bool = True) -> DigitsNet:
    """Train DigitsNet with Adam and light noise augmentation."""
    torch.manual_seed(recipe.seed)
    net = DigitsNet()
    opt = torch.optim.Adam(net.parameters(), lr=recipe.lr)
    gen = torch.Generator().manual_seed(recipe.seed)
    for _ in tqdm(range(recipe.epochs), desc="train digits classifier", disable=not progress):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), recipe.batch_size):
            idx = order[i:i + recipe.batch_size]
            xb = x[idx] + recipe.noise_augment * torch.randn(x[idx].shape, generator=gen)
            loss = nn.functional.cross_entropy(net(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return net.eval()


@torch.no_grad()
def predict(net: nn.Module, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Predicted class of each image in [-1, 1]."""
    net.eval()
    return torch.cat([net(images[i:i + batch_size]).argmax(1) for i in range(0, len(images), batch_size)])


@torch.no_grad()
def probabilities(net: nn.Module, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Softmax class probabilities of each image in [-1, 1]."""
    net.eval()
    return torch.cat([net(images[i:i + batch_size]).softmax(1) for i in range(0, len(images), batch_size)])


def accuracy(net: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of images classified as their label."""
    return (predict(net, images) == labels).float().mean().item() if len(labels) else float("nan")


def save_classifier(net: DigitsNet, path: Path, recipe: ClassifierRecipe, test_accuracy: float) -> None:
    metadata = {"recipe": str(asdict(recipe)), "test_accuracy": str(test_accuracy)}
    save_file(net.state_dict(), str(path), metadata=metadata)


def load_classifier(path: Path) -> DigitsNet:
    net = DigitsNet()
    net.load_state_dict(load_file(str(path)))
    return net.eval()
