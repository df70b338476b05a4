"""Erasure that stops when the class is gone (erase.stop_at_forget_accuracy): the probe's rule, its
early stop, and that its samples change neither the erasure nor the evaluation."""
import json
from types import SimpleNamespace

import torch
from conftest import TINY, changed
from safetensors.torch import load_file

from dualerase.cli import erase_class
from dualerase.runs.probe import ForgetProbe
from dualerase.unlearn import EraseConfig, unlearn


def _probe(target=0.02, history=()):
    cfg = SimpleNamespace(erase=EraseConfig(stop_at_forget_accuracy=target, probe_every=5))
    return ForgetProbe(None, cfg, forget_class=3, history=list(history))


def test_stops_after_two_probes_in_a_row_at_the_target():
    probe = _probe()
    assert [probe.stop(fa) for fa in (0.5, 0.02, 0.1, 0.0, 0.01)] == \
        [False, False, False, False, True]


def test_a_resumed_run_keeps_the_count_of_probes_at_the_target():
    history = [{"step": 4, "probe_forget_accuracy": 0.3}, {"step": 5},
               {"step": 9, "probe_forget_accuracy": 0.0}]
    assert _probe(history=history).stop(0.01)
    assert not _probe(history=history[:1]).stop(0.01)


def test_probes_only_every_probe_every_steps_and_only_when_asked():
    assert [_probe().due(n) for n in (1, 4, 5, 10)] == [False, False, True, True]
    assert not _probe(target=None).due(5)


def test_unlearn_ends_when_on_step_says_so():
    model = torch.nn.Linear(2, 1)
    method = SimpleNamespace(forget_loss=lambda m, b: m(b).sum(),
                             retain_loss=lambda m, b: -m(b).sum(), alpha_weights="forget")
    data = iter(lambda: torch.ones(1, 2), None)
    log = unlearn(model, method, data, data, EraseConfig(outer_steps=10),
                  on_step=lambda r: r["step"] == 3, progress=False)
    assert [r["step"] for r in log] == [0, 1, 2, 3]


def _run(tmp_path, name, *sets):
    out = tmp_path / name
    extra = [arg for item in sets for arg in ("--set", item)]
    assert erase_class.main(["3", "--output", str(out), *TINY, *extra]) == 0
    return out, [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_a_quick_erasure_stops_at_its_second_probe_and_draws_its_curve(tmp_path):
    # Target 1.0: every probe meets it, so the run stops at the second probe (step 6), never at the
    # first (step 3).
    out, log = _run(tmp_path, "stop", "erase.outer_steps=12", "erase.probe_every=3",
                    "erase.probe_samples=4", "erase.probe_steps=2",
                    "erase.stop_at_forget_accuracy=1.0")
    assert len(log) == 6
    assert [r["step"] for r in log if "probe_forget_accuracy" in r] == [2, 5]
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["outer_steps"], metrics["outer_steps_limit"]) == (6, 12)
    assert (out / "forget_curve.png").stat().st_size > 0


def test_probe_samples_change_neither_the_erasure_nor_the_evaluation(tiny_run, tmp_path):
    # One probe (at step 2 of 3) that never gets a second: the run goes the full length, as tiny_run
    # without a probe.
    _, plain = tiny_run
    out, log = _run(tmp_path, "probed", "erase.probe_every=2", "erase.probe_samples=4",
                    "erase.probe_steps=2", "erase.stop_at_forget_accuracy=1.0")
    assert len(log) == 3 and "probe_forget_accuracy" in log[1]
    assert changed(load_file(str(out / "model" / "diffusion_pytorch_model.safetensors")),
                   load_file(str(plain / "model" / "diffusion_pytorch_model.safetensors"))) == []
    probed, reference = (json.loads((d / "metrics.json").read_text())["after"]
                         for d in (out, plain))
    assert probed == reference
