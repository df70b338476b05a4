"""What several test modules share: the throw-away cache, the shrunk digits settings, a tiny
finished run, a tiny DiT, and the snapshot helpers that compare weights or folders before and after.
Test modules import the plain names from here (`from conftest import TINY, snapshot, changed`);
fixtures need no import."""
import os
from collections.abc import Mapping
from pathlib import Path

# as dualerase/__init__.py: bitwise-reproducible CPU results
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))

# The digits default shrunk to seconds: `--set` overrides for erase-class, sample-grid and
# fid-bench.
SETS = ["digits.steps=30", "classifier.epochs=3", "method.grad_samples=4", "erase.outer_steps=3",
        "erase.batch_size=8", "sample.steps=4", "eval.forget_samples=10",
        "eval.retain_samples_per_class=10", "eval.grid_per_class=2", "method.replay_per_class=2"]
TINY = [arg for item in SETS for arg in ("--set", item)] + ["--quiet"]


def shared_cache(tmp_path_factory) -> Path:
    """The one throw-away cache (DUALERASE_HOME) of the whole test session: the trained digits
    models are made once."""
    return tmp_path_factory.getbasetemp() / "dualerase-cache"


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory):
    """The same for module-scoped fixtures, which run before any function-scoped one: none writes to
    ~/.cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("DUALERASE_HOME", str(shared_cache(tmp_path_factory)))
    mp.setenv("HF_HUB_OFFLINE", "1")
    yield
    mp.undo()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test shares one throw-away cache: prepared models never leak into the user's
    ~/.cache."""
    monkeypatch.setenv("DUALERASE_HOME", str(shared_cache(tmp_path_factory)))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """(exit code, output folder) of `erase-class 3` with TINY settings, run once per test module
    that asks for it."""
    from dualerase.cli import erase_class

    out = tmp_path_factory.mktemp("run") / "out"
    mp = pytest.MonkeyPatch()  # module scope: the autouse cache fixture has not run yet
    mp.setenv("DUALERASE_HOME", str(shared_cache(tmp_path_factory)))
    code = erase_class.main(["3", "--output", str(out), *TINY])
    mp.undo()
    return code, out


@pytest.fixture
def tiny_dit():
    from dualerase.models.dit import build_dit

    torch.manual_seed(0)
    return build_dit(num_classes=5, sample_size=4, in_channels=1, patch_size=2, layers=2, heads=2,
                     head_dim=8)


class Features(torch.nn.Module):
    """torchmetrics' custom feature model: uint8 images -> the same 64-d features torch-fidelity
    gets from an extractor (a torch-fidelity FeatureExtractorBase)."""

    num_features = 64

    def __init__(self, extractor):
        super().__init__()
        self.extractor = extractor

    def forward(self, x):
        return self.extractor(x)[0].double()


def own_cache(tmp_path: Path, monkeypatch) -> None:
    """A cache of the test's own (DUALERASE_HOME) that shares the session's trained digits models:
    scores of a patched scorer never land in the shared cache."""
    own = tmp_path / "cache"
    shared = Path(os.environ["DUALERASE_HOME"]) / "digits"
    shared.mkdir(parents=True, exist_ok=True)
    own.mkdir()
    (own / "digits").symlink_to(shared)
    monkeypatch.setenv("DUALERASE_HOME", str(own))


# --- Before/after snapshots ---

Tensors = torch.nn.Module | Mapping[str, torch.Tensor]


def _tensors(source: Tensors) -> Mapping[str, torch.Tensor]:
    return source.state_dict() if isinstance(source, torch.nn.Module) else source


def snapshot(source: Tensors) -> dict[str, torch.Tensor]:
    """A copy of every tensor of a model's state dict (or of a name -> tensor mapping), by name."""
    return {name: t.detach().clone() for name, t in _tensors(source).items()}


def changed(now: Tensors, before: Tensors) -> list[str]:
    """The names in `before` whose tensor in `now` is not equal (shape and every element): [] when
    nothing moved. Either side is a model (its state dict), a snapshot or any name -> tensor
    mapping, e.g. a loaded weights file."""
    now, before = _tensors(now), _tensors(before)
    return [name for name, t in before.items() if not torch.equal(now[name], t)]


def folder_snapshot(folder: Path) -> dict[Path, bytes]:
    """The bytes of every file under `folder`, by path relative to it: equal snapshots, an untouched
    folder."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def mtimes(folder: Path, pattern: str) -> dict[Path, int]:
    """The modification time (ns) of each file in `folder` matching the glob `pattern`, by path
    relative to it."""
    return {p.relative_to(folder): p.stat().st_mtime_ns for p in folder.glob(pattern)}
