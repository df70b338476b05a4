"""erase.ema_decay: the erased model is the moving average SA evaluates; a resumed run averages as
an unbroken one."""
import pytest
import torch
from conftest import TINY
from safetensors.torch import load_file

from dualerase.cli import erase_class
from dualerase.runs import erasure

RUN = ["3", *TINY, "--set", "erase.outer_steps=6", "--set", "erase.checkpoint_every=2", "--set",
       "erase.ema_decay=0.6"]


@pytest.fixture
def steps(monkeypatch):
    """Records the trained weights after every outer step; `stop_at` (set by a test) interrupts the
    run there."""
    seen = {"weights": [], "stop_at": None, "start": None}
    real = erasure.unlearn

    def recording(model, *args, on_step, **kwargs):
        seen["start"] = {n: p.detach().clone()
                         for n, p in model.named_parameters() if p.requires_grad}

        def step(record):
            seen["weights"].append({n: p.detach().clone()
                                    for n, p in model.named_parameters() if p.requires_grad})
            if record["step"] == seen["stop_at"]:
                raise KeyboardInterrupt
            return on_step(record)

        return real(model, *args, on_step=step, **kwargs)

    monkeypatch.setattr(erasure, "unlearn", recording)
    return seen


def _saved(out):
    return load_file(str(out / "model" / "diffusion_pytorch_model.safetensors"))


def test_the_erased_model_is_the_moving_average_and_a_resumed_run_averages_alike(tmp_path, steps):
    assert erase_class.main([*RUN, "--output", str(tmp_path / "whole")]) == 0
    assert len(steps["weights"]) == 6
    average = steps["start"]  # the base model's weights: erasure starts from a copy of it
    for weights in steps["weights"]:  # a <- d a + (1 - d) w, from the base model's weights
        for n, w in weights.items():
            average[n] = 0.6 * average[n] + 0.4 * w
    whole, last = _saved(tmp_path / "whole"), steps["weights"][-1]
    assert set(average) <= set(whole)
    for n, a in average.items():
        assert torch.allclose(whole[n], a, atol=1e-6), n
    assert any(not torch.allclose(whole[n], last[n]) for n in last)  # not the raw weights

    # after checkpoint-4: steps 4 and 5 run again from it, the average from its saved state
    steps["stop_at"] = 4
    assert erase_class.main([*RUN, "--output", str(tmp_path / "cut")]) == 130
    steps["stop_at"] = None
    assert erase_class.main([*RUN, "--output", str(tmp_path / "cut"), "--resume", "latest"]) == 0
    cut = _saved(tmp_path / "cut")
    assert whole.keys() == cut.keys()
    assert all(torch.equal(whole[n], cut[n]) for n in whole)
