"""DiT-XL/2 at full size, random weights: parameter count, one DualOptim erase step and one sampling
step on CPU."""
import itertools
import resource
import time

import pytest
import torch

from dualerase.models.dit import build_dit, make_scheduler
from dualerase.models.loss import DiTLoss
from dualerase.sampling import sample
from dualerase.unlearn.dualoptim import EraseConfig, unlearn
from dualerase.unlearn.methods import MethodConfig, make_method

XL = dict(num_classes=1000, sample_size=32, in_channels=4, patch_size=2, layers=28, heads=16,
          head_dim=72)
# Measured with diffusers 0.42: DiTTransformer2DModel keeps a timestep + class embedder in each of
# the 28 blocks (2,777,472 parameters each); with one shared copy, as in the original DiT, the count
# is 674,834,720 (~675M).
XL_PARAMS = 749_826_464
XL_PARAMS_ONE_EMBEDDER = 674_834_720


def _peak_rss_gib() -> float:
    """High-water resident memory of this process so far, in GiB (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _report(part: str, start: float) -> None:
    """Print a part's wall time and the process's peak RSS after it."""
    print(f"\n[xl] {part}: {time.perf_counter() - start:.1f} s, peak RSS so far "
          f"{_peak_rss_gib():.2f} GiB", flush=True)


def _batches(label: int, seed: int):
    """An endless iterator over one fixed (latent, label) batch of size 1."""
    gen = torch.Generator().manual_seed(seed)
    return itertools.repeat((torch.randn(1, 4, 32, 32, generator=gen), torch.tensor([label])))


@pytest.mark.slow
def test_xl_builds_erases_one_step_and_samples_one_step():
    start = time.perf_counter()
    torch.manual_seed(0)
    model = build_dit(**XL)
    n_params = sum(p.numel() for p in model.parameters())
    per_block_emb = sum(p.numel() for p in model.transformer_blocks[0].norm1.emb.parameters())
    one_embedder = n_params - (len(model.transformer_blocks) - 1) * per_block_emb
    print(f"\n[xl] parameters: {n_params:,} ({one_embedder:,} with one shared timestep/class "
          "embedder)")
    assert abs(n_params - XL_PARAMS) <= 0.01 * XL_PARAMS
    assert abs(one_embedder - XL_PARAMS_ONE_EMBEDDER) <= 0.01 * XL_PARAMS_ONE_EMBEDDER
    _report("build", start)

    # One outer step of plain GA (no mask, so no Fisher pass) with dual AdamW: one forget and one
    # retain update. A strided sample of every parameter stands in for a full copy of the weights (3
    # GB more at fp32).
    start = time.perf_counter()
    before = {n: p.detach().flatten()[::101].clone() for n, p in model.named_parameters()}
    loss = DiTLoss(make_scheduler())
    method = make_method(MethodConfig(name="ga"), loss, forget_class=0, num_classes=1000)
    log = unlearn(model, method, _batches(0, 1), _batches(1, 2),
                  EraseConfig(outer_steps=1, batch_size=1), progress=False)
    assert len(log) == 1
    after = {n: p.detach().flatten()[::101] for n, p in model.named_parameters()}
    changed = sum((after[n] != before[n]).sum().item() for n in before) / \
        sum(v.numel() for v in before.values())
    assert changed > 0.5, f"only {changed:.1%} of sampled weights moved"
    assert all(torch.isfinite(p).all() for p in model.parameters())
    print(f"\n[xl] erase: forget loss {log[0]['forget_loss']:.4f}, retain loss "
          f"{log[0]['retain_loss']:.4f}, {changed:.1%} of sampled weights changed")
    del before, after
    _report("one erase outer step (GA, dual AdamW, batch 1)", start)

    start = time.perf_counter()
    out = sample(model, make_scheduler(), torch.tensor([3]), num_steps=1, guidance=1.5, seed=0,
                 batch_size=1, progress=False)
    assert out.shape == (1, 4, 32, 32)
    assert torch.isfinite(out).all()
    _report("one guided sampling step (1 image, guidance 1.5, no VAE)", start)
