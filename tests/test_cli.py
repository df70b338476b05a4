"""The commands end to end on the digits default, shrunk to seconds, and their bad-input errors."""
import json
import os
import re

import pytest
import torch
import yaml
from conftest import SETS, TINY, changed, snapshot
from safetensors.torch import load_file

from dualerase.cli import erase_class, fid_bench, sample_grid
from dualerase.config import load_config, parse_set
from dualerase.data.streams import STREAMS, stream_seed
from dualerase.errors import ConfigError
from dualerase.models.dit import load_dit, make_scheduler
from dualerase.models.loss import DiTLoss
from dualerase.runs.erasure import erase
from dualerase.runs.sources import Source, real_data
from dualerase.runs.workload import prepare_digits
from dualerase.sampling import sample
from dualerase.unlearn.methods import make_method


def test_erase_class_writes_every_output(tiny_run):
    code, out = tiny_run
    assert code == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["forget_class"] == 3
    assert m["method"] == "sfron"
    assert m["optimizer"] == "dual"
    assert m["seed"] == 0
    for side in ("before", "after"):
        assert 0 <= m[side]["forget_accuracy"] <= 1
        assert 0 <= m[side]["retain_accuracy"] <= 1
        assert m[side]["fid"] >= 0
    for key in ("sampler", "steps", "guidance", "forget_samples", "retain_samples", "reference",
                "feature_extractor", "seed"):
        assert key in m["protocol"]
    assert m["protocol"]["steps"] == 4
    assert m["protocol"]["forget_samples"] == 10
    import diffusers
    assert torch.__version__.startswith(m["protocol"]["versions"]["torch"])
    assert m["protocol"]["versions"]["diffusers"] == diffusers.__version__
    assert set(m["protocol"]["versions"]) == {"torch", "diffusers", "torch-fidelity", "timm"}
    assert m["protocol"]["device"].startswith("cpu")
    assert m["timings"]["erase_s"] > 0
    assert m["timings"]["erase_steps_per_s"] > 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [0, 1, 2]
    assert {"forget_loss", "retain_loss", "forget_grad_norm", "retain_grad_norm",
            "alpha"} <= set(log[0])
    assert (out / "grid.png").stat().st_size > 0
    # SFR-on: DiT's own loss scale
    assert m["loss_reductions"] == {"forget": "mean", "retain": "mean"}
    assert load_config(str(out / "config.yaml")).erase.outer_steps == 3


def test_saved_model_is_the_erased_one(tiny_run):
    _, out = tiny_run
    model = load_dit(str(out / "model"))
    assert model.config.num_embeds_ada_norm == 10
    assert model.config.out_channels == 2
    from dualerase.models.digits import DigitsRecipe, load_digits_dit

    base = load_digits_dit(DigitsRecipe(steps=30), progress=False)
    assert changed(model, base)


def test_forget_probability_and_entropy_as_the_published_evaluator_reads_the_sample_files(tiny_run):
    import numpy as np
    from PIL import Image

    from dualerase.metrics.classifier import load_classifier

    _, out = tiny_run
    m = json.loads((out / "metrics.json").read_text())
    forget = np.load(out / "samples" / "forget.npz")
    retain = np.load(out / "samples" / "retain.npz")
    assert forget["arr_0"].shape == (10, 8, 8, 1)
    assert forget["arr_0"].dtype == np.uint8
    assert retain["arr_0"].shape == (90, 8, 8, 1)
    assert sorted(set(retain["arr_1"].tolist())) == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    assert len(list((out / "samples" / "forget").glob("*.png"))) == 10
    png = np.asarray(Image.open(out / "samples" / "forget" / "000003.png"))
    assert np.array_equal(png, forget["arr_0"][3, ..., 0])
    # Transcription of the published evaluator: softmax of the classifier, mean probability of the
    # forget class, mean entropy -sum p log p of each sample's distribution, share classified as the
    # forget class.
    from dualerase.metrics.classifier import ClassifierRecipe
    from dualerase.models.digits import prepare_digits_classifier

    # TINY's
    net = load_classifier(prepare_digits_classifier(ClassifierRecipe(epochs=3), progress=False)[0])
    x = torch.from_numpy(forget["arr_0"]).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        probs = torch.softmax(net(x), dim=-1)
    entropy = -(probs * torch.log(probs)).nan_to_num().sum(1).mean().item()
    assert m["after"]["forget_probability"] == pytest.approx(probs[:, 3].mean().item(), abs=1e-6)
    assert m["after"]["forget_entropy"] == pytest.approx(entropy, abs=1e-5)
    # the digits preset's FA rule: top class 3 of the ten digits and "not a digit" (class 10);
    # beside it, the published rule (top class among the ten digits) and the share called
    # "not a digit"
    assert probs.shape[1] == 11
    assert m["after"]["forget_accuracy"] == pytest.approx(
        (probs.argmax(1) == 3).float().mean().item())
    published = (probs[:, :10].argmax(1) == 3).float().mean().item()
    assert m["after"]["forget_accuracy_published"] == pytest.approx(published)
    assert m["after"]["forget_not_a_class"] == pytest.approx(
        (probs.argmax(1) == 10).float().mean().item())
    assert m["protocol"]["forget_rule"] == "top class"


def test_finished_output_is_not_overwritten(tiny_run, capsys):
    code, out = tiny_run
    before = (out / "metrics.json").read_bytes()
    assert erase_class.main(["3", "--output", str(out), *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "--overwrite" in err
    assert (out / "metrics.json").read_bytes() == before


@pytest.mark.parametrize("args,needle", [
    (["12"], "out of range"),
    (["three"], "unknown class"),
    (["3", "--set", "erase.outer_step=5"], "did you mean erase.outer_steps"),
    (["3", "--set", "erase.forget_lr=0"], "erase.forget_lr must be > 0"),
    (["3", "--set", "erase.outer_steps=many"], "erase.outer_steps must be int"),
    (["3", "--config", "digitz"], "unknown preset 'digitz'"),
    (["3", "--set", "novalue"], "key=value"),
])
def test_bad_input_is_one_line_and_exit_2(args, needle, tmp_path, capsys):
    assert erase_class.main(args + ["--output", str(tmp_path / "o"), *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err
    assert "\n" not in err
    assert "Traceback" not in err
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_set_values_are_typed():
    assert parse_set("erase.forget_lr=1e-4") == {"erase": {"forget_lr": 1e-4}}
    assert parse_set("erase.forget_clip=null") == {"erase": {"forget_clip": None}}
    cfg = load_config("digits", ["erase.outer_steps=7", "erase.alpha=1", "method.name=ga"])
    assert cfg.erase.outer_steps == 7
    assert isinstance(cfg.erase.alpha, float)
    assert cfg.method.name == "ga"
    with pytest.raises(ConfigError, match="sfron"):
        load_config("digits", ["method.name=sfrn"])


def test_sample_grid_compares_models(tiny_run, tmp_path):
    _, out = tiny_run
    png = tmp_path / "g.png"
    assert sample_grid.main(["base", str(out), "--mark", "3", "--per-class", "2", "--output",
                             str(png), *TINY]) == 0
    assert png.stat().st_size > 0
    assert sample_grid.main(["nowhere", "--output", str(png), *TINY]) == 2


def test_fid_bench_table_plots_and_resume(tmp_path):
    args = ["--classes", "3", "--seeds", "0", "1", "--methods", "salun", "--optimizers", "dual",
            "shared", "--output", str(tmp_path), *TINY]
    assert fid_bench.main(args) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert len(results["cells"]) == 4
    rows = {(r["method"], r["optimizer"], r["class"]): r for r in results["rows"]}
    fids = [c["after"]["fid"] for c in results["cells"]
            if (c["method"], c["optimizer"]) == ("salun", "dual")]
    assert rows["salun", "dual", "3"]["fid"] == pytest.approx(sum(fids) / 2)
    assert rows["salun", "dual", "3"]["fid_std"] == pytest.approx(abs(fids[0] - fids[1]) / 2 ** 0.5)
    table = (tmp_path / "results.md").read_text()
    assert "| salun | shared | 3 | 2 |" in table
    assert "Protocol: DDPM" in table
    for png in ("forget_loss.png", "grad_norms.png"):
        assert (tmp_path / png).stat().st_size > 1000
    stamp = (tmp_path / "cells" / "salun-dual-3-s0" / "metrics.json").stat().st_mtime_ns
    assert fid_bench.main(args) == 0  # finished cells are skipped, not redone
    assert (tmp_path / "cells" / "salun-dual-3-s0" / "metrics.json").stat().st_mtime_ns == stamp
    # a changed config never reuses old cells
    assert fid_bench.main(args + ["--set", "erase.alpha=0.5"]) == 2


def test_fid_bench_rejects_a_bad_spec(tmp_path, capsys):
    spec = tmp_path / "s.yaml"
    spec.write_text("methods: [ga]\nclases: [1]\n")
    assert fid_bench.main([str(spec), "--output", str(tmp_path / "o")]) == 2
    assert "clases" in capsys.readouterr().err


def test_sa_is_fed_surrogate_noise_and_replay_from_the_frozen_original(tmp_path):
    cfg = load_config("digits", SETS + ["method.name=sa"])
    w = prepare_digits(cfg, progress=False)
    original = snapshot(w.model)
    method = make_method(cfg.method, DiTLoss(make_scheduler()), forget_class=3, num_classes=10)
    real_set = real_data(w, cfg, 3, progress=False)
    xf, yf, xr, yr = method.data(Source(w, cfg, real_set, progress=False, replay_dir=None))
    real = w.real_data(3, cfg)[0]
    assert xf.shape == real.shape
    assert torch.all(yf == 3)
    assert not torch.equal(xf, real)
    assert -1 <= xf.min()  # uniform noise, not digits
    assert xf.max() <= 1
    assert xf.std() > 0.5
    assert 3 not in yr.tolist()
    assert len(yr) == 18
    expected = sample(w.model, make_scheduler(), yr, num_steps=cfg.sample.steps,
                      guidance=cfg.sample.guidance, seed=stream_seed(cfg.seed, "replay"),
                      progress=False)
    assert torch.equal(xr, expected)
    erase(w, cfg, 3, real_set, tmp_path, progress=False)
    assert not changed(w.model, original)  # the original stays frozen


def test_no_two_seeds_share_a_random_stream():
    """Seed s's streams are unrelated to seed s+1's, and none is the raw seed.

    An offset scheme would make seed 0's retain batches seed 1's forget batches; the raw seed keys
    the evaluation's noise."""
    seeds = range(50)
    drawn = [stream_seed(seed, name) for seed in seeds for name in STREAMS]
    assert len(set(drawn)) == len(drawn)
    assert not set(drawn) & set(seeds)


@pytest.mark.parametrize("method", ["ga", "salun", "sa"])
@pytest.mark.parametrize("optimizer", ["dual", "shared"])
def test_every_method_runs_in_both_modes(method, optimizer, tmp_path):
    out = tmp_path / "o"
    assert erase_class.main(["3", "--method", method, "--optimizer", optimizer, "--output",
                             str(out), *TINY]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["method"] == method
    assert m["optimizer"] == optimizer


def test_trials_report_mean_and_std_and_keep_each_run(tmp_path, capsys):
    out = tmp_path / "t"
    assert erase_class.main(["3", "--trials", "2", "--seed", "4", "--output", str(out), *TINY]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["seeds"] == [4, 5]
    assert [t["seed"] for t in m["trials"]] == [4, 5]
    for key in ("forget_accuracy", "retain_accuracy", "fid"):
        values = [t["after"][key] for t in m["trials"]]
        assert m["after"][key] == pytest.approx(sum(values) / 2)
        assert m["std"]["after"][key] == pytest.approx(abs(values[0] - values[1]) / 2 ** 0.5)
    # the seed changes the run
    assert m["trials"][0]["after"]["fid"] != m["trials"][1]["after"]["fid"]
    assert (out / "trial-s5" / "model" / "config.json").exists()
    assert "+-" in capsys.readouterr().out


def test_fisher_and_mask_are_saved_once_and_shared_by_both_optimizer_modes(tmp_path):
    runs = {opt: tmp_path / opt for opt in ("dual", "shared")}
    for opt, out in runs.items():
        assert erase_class.main(["3", "--optimizer", opt, "--output", str(out), *TINY]) == 0
    dual, shared = (runs[o] / "prepared.safetensors" for o in ("dual", "shared"))
    # one file in the cache, linked into both runs
    assert os.stat(dual).st_ino == os.stat(shared).st_ino
    tensors = load_file(str(dual))
    assert any(k.startswith("state.fisher_forget.") for k in tensors)
    assert any(k.startswith("state.fisher_retain.") for k in tensors)
    assert any(k.startswith("mask.") for k in tensors)


def test_bf16_and_gradient_checkpointing_run(tmp_path):
    plain, other = tmp_path / "plain", tmp_path / "ckpt"
    assert erase_class.main(["3", "--output", str(plain), *TINY]) == 0
    assert erase_class.main(["3", "--output", str(other), *TINY, "--set",
                             "compute.gradient_checkpointing=true"]) == 0
    a, b = (load_file(str(o / "model" / "diffusion_pytorch_model.safetensors"))
            for o in (plain, other))
    # recomputation changes memory, not the result
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    bf16 = tmp_path / "bf16"
    assert erase_class.main(["3", "--output", str(bf16), *TINY, "--set",
                             "compute.mixed_precision=bf16"]) == 0
    c = load_file(str(bf16 / "model" / "diffusion_pytorch_model.safetensors"))
    assert all(c[k].dtype == torch.float32 for k in c)  # weights stay float32
    assert all(torch.isfinite(c[k]).all() for k in c)
    assert changed(c, a)


def test_print_config_prints_every_key_and_reads_back(tmp_path, capsys):
    from dualerase.config import all_keys

    assert erase_class.main(["7", "--set", "erase.outer_steps=17", "--print-config"]) == 0
    text = capsys.readouterr().out
    path = tmp_path / "printed.yaml"
    path.write_text(text)
    cfg = load_config(str(path))
    assert cfg.erase.outer_steps == 17
    printed = yaml.safe_load(text)
    flat = {f"{section}.{key}" for section, body in printed.items() if isinstance(body, dict)
            for key in body}
    flat |= {section for section, body in printed.items() if not isinstance(body, dict)}
    assert flat == set(all_keys())


def test_dry_run_checks_and_counts_without_running(tmp_path, capsys):
    out = tmp_path / "never"
    assert erase_class.main(["7", "--output", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert not out.exists()
    # the digits preset by hand: 200 outer steps x (1 forget + 1 retain) x batch 256; SFR-on's two
    # Fisher diagonals of 256 samples; (200 + 9 x 100) samples x 100 unguided steps per evaluation
    assert "102,400" in text and "512" in text and "110,000" in text
    assert erase_class.main(["seven", "--output", str(out), "--dry-run"]) == 2
    assert "unknown class" in capsys.readouterr().err
    # a tracker that is not installed is refused by the dry run too (wandb is not among the test
    # extras)
    assert erase_class.main(["7", "--output", str(out), "--dry-run", "--report-to", "wandb"]) == 2
    assert "wandb" in capsys.readouterr().err


def test_dry_run_estimates_each_phase_from_the_throughput_measured_now(tmp_path, capsys,
                                                                       monkeypatch):
    """Each pass at its measured rate, and the cached phases' share said apart.

    A pass with a backward pass at the forward-and-backward rate (the classifier's own in its
    training), a pass without at the forward rate. The CLI measures the rates for real."""
    from dualerase.config import load_config
    from dualerase.runs import plan

    monkeypatch.setattr(plan, "throughput",
                        lambda cfg: {"forward": 0.1, "backward": 0.2, "classifier": 0.5})
    rows = [("erasure", 1000, 400), ("evaluation before (cached after a first run)", 500, 0),
            ("digits classifier training, once", 200, 200)]
    # 400 x 0.2 + 600 x 0.1 = 140 s; 500 x 0.1 = 50 s (cached); 200 x 0.5 = 100 s: 290 s in all
    assert plan.estimate(load_config("digits"), rows).startswith(
        "time: about 4.8 min on this machine (0.8 min of it in phases cached after a first run), "
        "from 100000 us per image forward and 200000 us forward and backward")
    monkeypatch.undo()
    assert erase_class.main(["7", "--output", str(tmp_path / "never"), "--dry-run"]) == 0
    assert re.search(r"time: about \d+\.\d min on this machine", capsys.readouterr().out)


def test_dry_run_lists_the_one_time_training_of_the_digits_models(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DUALERASE_HOME", str(tmp_path / "empty-cache"))
    assert erase_class.main(["7", "--output", str(tmp_path / "never"), "--dry-run"]) == 0
    assert "training, once" not in capsys.readouterr().out  # the shipped weights are the recipe's
    train = ["--set", "digits.shipped=false"]  # asked to train them instead
    assert erase_class.main(["7", "--output", str(tmp_path / "never"), "--dry-run", *train]) == 0
    text = capsys.readouterr().out
    # 6,000 steps of batch 128; 60 epochs of the 1,437 train digits and half as many junk images
    assert "digits DiT training, once (6000 steps; then cached)" in text and "768,000" in text
    assert ("digits classifier training, once (60 epochs; then cached)" in text
            and f"{60 * 2156:,d}" in text)
    assert not (tmp_path / "empty-cache" / "digits").exists()  # counted, not trained
    # fid-bench's dry run sums its cells: the training once, the base model's evaluation once per
    # class and seed
    from dualerase.bench.cells import plan as bench_plan
    from dualerase.runs import plan

    monkeypatch.setattr(plan, "throughput",
                        lambda cfg: {"forward": 1e-3, "backward": 2e-3, "classifier": 1e-3})
    choice = {"methods": ["ga", "sfron"], "optimizers": ["dual"], "classes": ["3"], "seeds": [0, 1]}
    assert fid_bench.main([*(a for k, v in choice.items() for a in (f"--{k}", *map(str, v))),
                           "--output", str(tmp_path / "bench"), "--dry-run", *train]) == 0
    text = capsys.readouterr().out
    rows = {m[1]: (m[2], m[3])
            for m in re.finditer(r"^(\S.*?)\s{2,}([\d,]+)\s+([\d,]+)$", text, re.M)}
    one = {name: fwd
           for name, fwd, _ in plan.passes(bench_plan("digits", **choice).configs[0], 10, 10)}
    assert rows["digits DiT training, once (6000 steps; then cached)"] == ("768,000", "768,000")
    before, erasure = "evaluation before (cached after a first run)", "erasure (200 outer steps)"
    assert rows[before][0] == f"{2 * one[before]:,d}"  # seeds 0 and 1
    assert rows[erasure][0] == f"{4 * one[erasure]:,d}"  # every cell
    assert "time: about" in text and not (tmp_path / "bench").exists()


def test_fid_bench_dry_run_lists_the_cells_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "bench"
    assert fid_bench.main(["--methods", "ga", "sa", "--optimizers", "dual", "--classes", "3",
                           "--seeds", "0", "1", "--output", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "4 cells, 0 finished" in text and "sa / dual / class 3 / seed 1" in text
    assert not out.exists()
    # a cell started under another config is refused by the dry run, as by the real run before its
    # first cell
    from dualerase.bench.cells import cell_folder, plan
    from dualerase.config import to_dict

    grid = plan("digits", methods=["ga"], optimizers=["dual"], classes=[3], seeds=[0])
    cell = cell_folder(out, "ga", "dual", "3", 0)
    cell.mkdir(parents=True)
    (cell / "config.yaml").write_text(yaml.safe_dump(to_dict(grid.configs[0]) | {
        "seed": 0, "eval": {**to_dict(grid.configs[0])["eval"], "forget_samples": 7}}))
    args = ["--methods", "ga", "--optimizers", "dual", "--classes", "3", "--seeds", "0", "--output",
            str(out)]
    assert fid_bench.main([*args, "--dry-run"]) == 2
    assert "was run with another config" in capsys.readouterr().err


def test_the_model_card_says_what_was_erased_how_well_and_how_to_load(tiny_run):
    from huggingface_hub import ModelCard

    _, out = tiny_run
    m = json.loads((out / "metrics.json").read_text())
    card = ModelCard.load(out / "model" / "README.md")
    assert card.data.library_name == "diffusers" and "dualoptim" in card.data.tags
    assert "class 3 (digit 3)" in card.text and "sfron with dual optimizer(s)" in card.text
    assert f"| forget accuracy (lower is better) | {m['before']['forget_accuracy']:.3f} | " \
           f"{m['after']['forget_accuracy']:.3f} |" in card.text
    assert f"diffusers {m['protocol']['versions']['diffusers']}" in card.text
    assert "DiTTransformer2DModel.from_pretrained" in card.text
    for key, label in (("forget_accuracy_published", "published top-class rule"),
                       ("forget_not_a_class", 'called "not a digit"')):
        assert f"{label} | {m['before'][key]:.3f} | {m['after'][key]:.3f} |" in card.text
    # the config the card links is in the folder that a push uploads
    assert "(dualerase-config.yaml)" in card.text
    assert ((out / "model" / "dualerase-config.yaml").read_text()
            == (out / "config.yaml").read_text())


def test_push_to_hub_offline_is_refused_before_the_run_and_a_failed_push_keeps_the_run(
        tmp_path, capsys, monkeypatch):
    from dualerase.integrations import card

    out = tmp_path / "run"
    for dry in ([], ["--dry-run"]):
        assert erase_class.main(["3", "--output", str(out), *TINY, "--push-to-hub",
                                 "someone/erased", *dry]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "hf auth login" in err and "hf upload someone/erased" in err
        assert not out.exists()  # refused before any work
    # The Hub answered before the run but the upload fails: the summary is printed, the run kept,
    # the retry named.
    monkeypatch.setattr(card, "check_hub", lambda repo: None)
    assert erase_class.main(["3", "--output", str(out), *TINY, "--push-to-hub",
                             "someone/erased"]) == 2
    printed = capsys.readouterr()
    assert "retain accuracy" in printed.out and printed.err.count("\n") == 1
    assert f"retry with `hf upload someone/erased {out / 'model'}`" in printed.err
    assert (out / "metrics.json").exists() and (out / "model" / "README.md").exists()


def test_report_to_tensorboard_logs_every_step_and_the_scores(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tracked"
    assert erase_class.main(["3", "--output", str(out), *TINY, "--report-to", "tensorboard"]) == 0
    # the run's scalars (its hparams sit in a sub-folder)
    acc = EventAccumulator(str(out / "logs" / "tracked"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in ("forget_loss", "retain_loss", "forget_grad_norm", "retain_grad_norm", "alpha"):
        assert [e.step for e in acc.Scalars(tag)] == [1, 2, 3]
    m = json.loads((out / "metrics.json").read_text())
    (fid,) = acc.Scalars("after/fid")
    assert fid.step == 3 and fid.value == pytest.approx(m["after"]["fid"], rel=1e-6)
    assert {"before/forget_accuracy", "after/retain_accuracy"} <= tags


def test_accelerate_launch_with_two_processes_gives_the_weights_of_one(tiny_run, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    _, one = tiny_run
    two = tmp_path / "two"
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    # --multi_gpu on a machine without one launches processes that talk over gloo (accelerate's
    # MULTI_CPU); --cpu would launch one process
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
           "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", "29519", "-m", "dualerase.cli.erase_class", "3", "--output",
           str(two), *TINY]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = load_file(str(one / "model" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(two / "model" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4) for k in a)
    # Tighter for every weight whose true gradient is not zero (an attention key bias's is: softmax
    # ignores it)
    assert max((a[k] - b[k]).abs().max().item() for k in a if not k.endswith("to_k.bias")) < 1e-6
    assert json.loads((two / "metrics.json").read_text())["timings"]["processes"] == 2


def test_a_launch_precision_other_than_the_configs_is_refused_in_one_line(tmp_path, capsys,
                                                                          monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    out = tmp_path / "never"
    assert erase_class.main(["3", "--output", str(out), *TINY]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "compute.mixed_precision=bf16" in err and not out.exists()


@pytest.mark.slow
def test_compiled_model_erases_and_samples_as_the_eager_one(tiny_run, tmp_path):
    """compute.compile: the same run through torch.compile ends at the eager run's results.

    Its weights and scores match the eager run's up to float rounding (slow: inductor compiles each
    batch shape, about a minute per shape on 2 cores)."""
    _, eager = tiny_run
    out = tmp_path / "compiled"
    assert erase_class.main(["3", "--output", str(out), *TINY, "--set",
                             "compute.compile=true"]) == 0
    a = load_file(str(eager / "model" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(out / "model" / "diffusion_pytorch_model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-4, rtol=1e-3) for k in a)
    ma, mb = (json.loads((o / "metrics.json").read_text()) for o in (eager, out))
    assert mb["after"]["fid"] == pytest.approx(ma["after"]["fid"], rel=0.05)


def test_score_only_measures_a_model_as_a_run_measures_it_before_erasing(tiny_run, tmp_path,
                                                                         capsys, monkeypatch):
    _, out = tiny_run
    before = json.loads((out / "metrics.json").read_text())["before"]
    monkeypatch.chdir(tmp_path)
    assert erase_class.main(["3", "--score-only", *TINY]) == 0
    text = capsys.readouterr().out
    assert f"forget accuracy (lower is better){before['forget_accuracy']:>13.3f}" in text
    assert f"retain accuracy{before['retain_accuracy']:>31.3f}" in text and "protocol: DDPM" in text
    assert not any(tmp_path.iterdir())  # nothing written but the cache
