"""The ImageNet workload on tiny stand-ins.

A hub-style pipeline folder, ImageNet-style data, the published protocol."""
import functools
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch
import torch_fidelity
from conftest import changed, folder_snapshot, mtimes
from diffusers import DiTPipeline, DiTTransformer2DModel
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import load_file, save_file
from tiny_imagenet import (
    SYNSETS,
    build_classifier,
    build_inception,
    build_pipeline,
    build_world,
    erase_args,
)

from dualerase.bench import spec as bench
from dualerase.cli import erase_class, fid_bench, fid_reference, sample_grid
from dualerase.config import load_config
from dualerase.data.classes import imagenet, resolve_class
from dualerase.data.folders import scan
from dualerase.errors import UsageError
from dualerase.metrics.fid import FIDELITY
from dualerase.metrics.imagenet import ImageNetScorer
from dualerase.models.dit import build_dit, make_scheduler
from dualerase.runs import evaluation
from dualerase.runs.workload import classes_of, prepare
from dualerase.sampling import sample

ROOT = Path(__file__).resolve().parents[1]
# A 10-class model whose classes are ImageNet's in another order than the synsets' (goldfish before
# tench)
LABELS_10 = ["goldfish, Carassius auratus", "golden retriever", "tench, Tinca tinca", "Chihuahua",
             "great white shark", "tiger shark", "hammerhead", "electric ray", "stingray", "cock"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("imagenet"))


args = erase_args


def test_classes_resolve_by_id_synset_and_name():
    classes = imagenet()
    assert resolve_class("207", classes) == 207
    assert resolve_class("n02099601", classes) == 207
    assert resolve_class("Golden Retriever", classes) == 207
    assert resolve_class("Tinca tinca", classes) == 0  # any synonym
    with pytest.raises(UsageError, match="did you mean 'golden retriever'"):
        resolve_class("golden retreiver", classes)
    with pytest.raises(UsageError, match="out of range"):
        resolve_class("1000", classes)
    with pytest.raises(UsageError, match="unknown synset"):
        resolve_class("n99999999", classes)
    with pytest.raises(UsageError, match=r"ambiguous: 134 \(crane\), 517 \(crane\)"):
        resolve_class("crane", classes)  # a bird and a machine: never guess
    for odd in ("¹", "--3", "٣"):  # digits that int() refuses or reads differently
        with pytest.raises(UsageError, match="unknown class"):
            resolve_class(odd, classes)


def test_erase_class_end_to_end_and_pipeline_output(world, tmp_path):
    out = tmp_path / "run"
    assert erase_class.main(args(world, out)) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["forget_class"] == 207
    assert m["class_name"] == "golden retriever"
    assert 0 < m["mask_kept_fraction"] < 1  # SFRon's Fisher mask
    for side in ("before", "after"):
        assert 0 <= m[side]["forget_accuracy"] <= 1
        assert m[side]["fid"] > 0
    assert "torch-fidelity inception-v3-compat" in m["protocol"]["feature_extractor"]
    assert "test_resnet at 32 px" in m["protocol"]["classifier"]
    assert m["protocol"]["retain_samples"] == 6
    assert "WARNING" not in m["protocol"]["reference"]
    assert len(list((out / "samples-after").glob("batch-*.pt"))) == 3  # 10 samples in batches of 4
    # the preset's: guidance scales, unconditional samples, nearest classes
    r = m["after"]["robustness"]
    assert set(r["forget_accuracy_at_guidance"]) == {"1", "1.5", "4", "7.5"}
    assert 0 <= r["unconditional_forget_share"] <= 1
    # retrievers first
    assert r["neighbour_classes"] == [205, 206, 208, 209, 159] and r["neighbours_by"] == "WordNet"
    assert r["neighbour_fid"] is None and "reference folder" in r["neighbour_fid_error"]
    # on the latents of 2 real images
    assert list(r["relearn"]["2"]["forget_accuracy"]) == ["0", "2"]
    assert (r["conditioning_attack"]["steps"] == 2
            and 0 <= r["conditioning_attack"]["forget_accuracy"] <= 1)
    pipe = DiTPipeline.from_pretrained(out / "model")
    assert pipe.get_label_ids(["golden retriever"]) == [207]
    images = pipe(class_labels=[207], num_inference_steps=2, output_type="np").images
    assert images.shape == (1, 16, 16, 3)
    erased = load_file(str(out / "model" / "transformer" / "diffusion_pytorch_model.safetensors"))
    base = load_file(str(world["model"] / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert changed(erased, base)
    # the VAE is saved with it
    assert (out / "model" / "vae" / "diffusion_pytorch_model.safetensors").exists()


def test_latent_cache_is_reused_and_runs_are_deterministic(world, tmp_path):
    runs = [tmp_path / name for name in "abc"]
    assert erase_class.main(args(world, runs[0])) == 0
    cache = Path(os.environ["DUALERASE_HOME"]) / "latents"
    files = mtimes(cache, "*.safetensors")
    assert len(files) >= 2  # the forget set and the retain subset
    for out in runs[1:]:
        assert erase_class.main(args(world, out)) == 0
    assert mtimes(cache, "*.safetensors") == files  # read, not re-encoded
    a, b, c = (load_file(str(out / "model" / "transformer" / "diffusion_pytorch_model.safetensors"))
               for out in runs)
    assert not changed(a, b)  # same command, same bits
    assert not changed(c, b)


def test_sampling_shards_cover_every_batch_once(tiny_dit):
    labels = torch.arange(5).repeat(3)
    kw = dict(num_steps=2, guidance=1.5, seed=1, batch_size=4, progress=False)
    whole = sample(tiny_dit, make_scheduler(), labels, **kw)
    parts = [sample(tiny_dit, make_scheduler(), labels, shard=(r, 3), **kw) for r in range(3)]
    assert [len(p) for p in parts] == [7, 4, 4]  # batches 0 and 3 (of 4 and 3 samples), 1, 2
    assert torch.equal(torch.cat([parts[0][:4], parts[1], parts[2], parts[0][4:]]), whole)


@pytest.fixture(scope="module")
def broken(world, tmp_path_factory):
    """Bad inputs of every kind, next to the good ones."""
    base = tmp_path_factory.mktemp("broken")
    (base / "empty").mkdir()
    no_forget = base / "no-forget"
    shutil.copytree(world["data"], no_forget)
    shutil.rmtree(no_forget / SYNSETS[0])
    undecodable = base / "undecodable"
    shutil.copytree(world["data"], undecodable)
    for f in (undecodable / SYNSETS[0]).iterdir():
        f.write_bytes(b"not an image")
    (undecodable / SYNSETS[1] / "broken.JPEG").write_bytes(b"\x00" * 10)
    not_dit = base / "not-dit"
    shutil.copytree(world["model"] / "vae", not_dit)
    five = base / "five-classes"
    tiny = build_dit(num_classes=5, sample_size=8, in_channels=3, patch_size=2, layers=1, heads=2,
                     head_dim=8)
    tiny.save_pretrained(five)
    corrupt = base / "corrupt"
    shutil.copytree(world["model"], corrupt)
    (corrupt / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(b"truncated")
    odd = base / "odd-sigma"  # 6 output channels for 4 in: neither noise alone nor noise and sigma
    shutil.copytree(world["model"], odd)
    DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4,
                          out_channels=6, num_layers=1, sample_size=8, patch_size=2,
                          num_embeds_ada_norm=1000).save_pretrained(odd / "transformer")
    ten = build_pipeline(base / "ten", labels=LABELS_10)
    ten_other = build_pipeline(base / "ten-other",  # Chihuahua's folder is none of its classes
                               labels=[n if n != "Chihuahua" else "Japanese spaniel"
                                       for n in LABELS_10])
    stray = base / "stray"  # a file system's own folder among the synsets
    shutil.copytree(world["data"], stray)
    (stray / "lost+found").mkdir()
    return {"empty": base / "empty", "no-forget": no_forget, "undecodable": undecodable,
            "not-dit": not_dit, "five": five, "corrupt": corrupt, "stray": stray, "odd-sigma": odd,
            "ten": ten, "ten-other": ten_other}


BAD = [
    (lambda w, b: ["--data", "/nonexistent/folder"], "is not a folder"),
    (lambda w, b: ["--data", str(b["empty"])], "holds no class sub-folders"),
    (lambda w, b: ["--data", str(b["no-forget"])], "no images of class 207 (golden retriever)"),
    (lambda w, b: ["--data", str(b["undecodable"])], "no decodable images in the forget set"),
    (lambda w, b: ["--model", "/nonexistent/dit"], "no such folder"),
    (lambda w, b: ["--model", "someone/missing-dit"], "hf download"),
    (lambda w, b: ["--model", str(b["not-dit"])], "is not a class-conditional DiT"),
    (lambda w, b: ["--model", str(b["corrupt"])], "cannot load the weights"),
    (lambda w, b: ["--set", "eval.fid_reference=/nonexistent"], "is not a reference folder"),
    (lambda w, b: ["--set", "eval.fa_classifier=resnet35"], "is not a timm model name"),
    (lambda w, b: ["--set", "eval.fa_weights=/nonexistent.safetensors"], "does not exist"),
    (lambda w, b: ["--set", "eval.fid_weights=/nonexistent.pth"], "does not exist"),
    # no network here
    (lambda w, b: ["--set", "eval.fid_weights=null"], "eval.fid_weights to a local copy"),
    (lambda w, b: ["--set", "eval.fid_extractor=inception-v4"],
     "is not a torch-fidelity feature extractor"),
    (lambda w, b: ["--data", str(b["stray"])],
     "sub-folder 'lost+found' is not an ImageNet synset: move it out"),
    (lambda w, b: ["--model", str(b["odd-sigma"])], "has 6 output channels for 4 input channels"),
    (lambda w, b: ["--output", "/sys/dualerase-run"],
     "cannot be written: creating a file in /sys failed"),
    (lambda w, b: ["--model", str(b["ten"])],
     "test_resnet has 1000 classes (from the head of eval.fa_weights"),
    (lambda w, b: ["--model", str(b["ten"]), "--set", "eval.fa_num_classes=10"],
     "size mismatch for fc.weight"),
    (lambda w, b: ["--model", str(b["ten-other"])],
     "'n02085620' (Chihuahua) is not one of the model's 10 classes"),
    (lambda w, b: ["--output", f"{w['classifier']}/run"],
     "classifier.safetensors is a file, not a folder"),
]


@pytest.fixture(scope="module")
def finished(world, tmp_path_factory):
    """A finished run, to check that bad input leaves it byte for byte as it was."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert erase_class.main(args(world, out)) == 0
    return out


@pytest.mark.parametrize("bad, message", BAD)
def test_bad_model_and_data_inputs(world, broken, finished, capsys, bad, message):
    before = folder_snapshot(finished)
    assert erase_class.main(args(world, finished, "--overwrite") + bad(world, broken)) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert err.count("\n") == 1, err
    assert "Traceback" not in err, err
    assert folder_snapshot(finished) == before


def test_a_class_count_that_does_not_match_the_data(world, broken, tmp_path, capsys):
    code = erase_class.main(["3", "--model", str(broken["five"]), "--data", str(world["data"]),
                             "--output", str(tmp_path / "o"), "--set",
                             f"eval.fid_reference={world['reference']}", "--quiet"])
    assert code == 2
    assert "has 4 class folders but the model has 5 classes" in capsys.readouterr().err


def test_undecodable_retain_images_are_skipped_with_a_warning(world, broken, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(world["data"], data)
    (data / SYNSETS[1] / "broken.JPEG").write_bytes(b"\x00" * 10)
    assert erase_class.main(args(world, tmp_path / "o", "--data", str(data), "--set",
                                 "data.retain_images=0")) == 0
    err = capsys.readouterr().err
    assert "skipped 1 undecodable image(s) of the retain set" in err
    assert "broken.JPEG" in err


def test_two_processes_give_the_weights_of_one(world, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert erase_class.main(args(world, one)) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT / 'tests'}:{ROOT}"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           "29517", "-m", "dualerase.cli.erase_class", *args(world, two)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = load_file(str(one / "model" / "transformer" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(two / "model" / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4) for k in a)
    ma, mb = (json.loads((o / "metrics.json").read_text()) for o in (one, two))
    assert mb["timings"]["processes"] == 2
    assert ma["timings"]["processes"] == 1
    starts = sorted(int(p.name.split("-")[1]) for p in (two / "samples-after").glob("batch-*.pt"))
    assert starts == [0, 4, 8]  # every batch once, none missing
    assert ma["after"]["forget_accuracy"] == mb["after"]["forget_accuracy"]


def test_sample_grid_of_a_hub_style_model_before_and_after(world, finished, tmp_path, capsys):
    png = tmp_path / "grid.png"
    assert sample_grid.main(["base", str(finished), "--model", str(world["model"]), "--classes",
                             "golden retriever", "n01440764", "--mark", "207", "--per-class", "2",
                             "--set", "sample.steps=2", "--output", str(png), "--quiet"]) == 0
    assert png.exists()
    assert "2 model(s) x 2 classes x 2" in capsys.readouterr().out
    assert sample_grid.main(["--model", str(world["model"]), "--classes", "golden retreiver",
                             "--output", str(png), "--quiet"]) == 2
    assert "did you mean 'golden retriever'" in capsys.readouterr().err


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=30))
def test_any_class_string_resolves_or_fails_with_a_usage_error(text):
    try:
        c = resolve_class(text, IMAGENET)
    except UsageError as e:
        assert "\n" not in str(e)
    else:
        assert 0 <= c < 1000


IMAGENET = imagenet()


def test_fid_bench_refuses_a_missing_model_before_running_any_cell(tmp_path, capsys):
    code = fid_bench.main(["--set", "model.source=diffusers", "--set",
                           "model.path=/nonexistent/dit", "--set", "eval.fa_real_distance=null",
                           "--classes", "207", "--output", str(tmp_path / "b"), "--quiet"])
    assert code == 2
    assert "no such folder" in capsys.readouterr().err
    assert not (tmp_path / "b" / "cells").exists()


def test_sigkill_during_erasure_then_resume_latest_matches_uninterrupted(world, finished, tmp_path):
    long = ["--set", "erase.outer_steps=120", "--set", "erase.checkpoint_every=10"]
    reference, out = tmp_path / "reference", tmp_path / "killed"
    assert erase_class.main(args(world, reference, *long)) == 0
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'tests'}:{ROOT}"}
    proc = subprocess.Popen([sys.executable, "-m", "dualerase.cli.erase_class",
                             *args(world, out, *long)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = out / "log.jsonl"
    while not (log.exists() and len(log.read_text().splitlines()) >= 45):
        assert proc.poll() is None, "finished before the kill"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "metrics.json").exists()
    assert list(out.glob("checkpoint-*"))
    assert erase_class.main(args(world, out, *long, "--resume", "latest")) == 0
    a, b = (load_file(str(o / "model" / "transformer" / "diffusion_pytorch_model.safetensors"))
            for o in (reference, out))
    assert not changed(b, a)
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == list(range(120))


def test_a_hub_style_transformer2dmodel_folder_loads_as_the_same_dit(tmp_path):
    from diffusers import Transformer2DModel

    from dualerase.models.pretrained import load_model

    # the hub's DiT folders were saved as Transformer2DModel with ada_norm_zero
    torch.manual_seed(0)
    legacy = Transformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4,
                                out_channels=8, num_layers=2, sample_size=8, patch_size=2,
                                num_embeds_ada_norm=1000, norm_type="ada_norm_zero",
                                norm_elementwise_affine=False)
    legacy.save_pretrained(tmp_path / "transformer")
    dit = load_model(tmp_path)
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([5, 700]), torch.tensor([3, 207])
    with torch.no_grad():
        assert torch.allclose(dit(x, t, class_labels=y).sample,
                              legacy(x, timestep=t, class_labels=y).sample, atol=1e-5)


def test_the_table2_benchmark_spec_names_the_papers_classes():
    spec = bench.read_spec("imagenet")
    names = [IMAGENET.short(resolve_class(c, IMAGENET)) for c in spec.classes]
    assert names == ["sulphur-crested cockatoo", "golden retriever", "white wolf", "Arctic fox",
                     "otter"]
    assert spec.config == "imagenet"
    assert set(spec.optimizers) == {"shared", "dual"}


def test_a_rebuilt_reference_folder_is_never_scored_with_old_numbers(world, tmp_path):
    ref = tmp_path / "ref"
    evals = Path(os.environ["DUALERASE_HOME"]) / "evals"
    scores = []
    for seed in ("0", "1"):
        assert fid_reference.main(["--data", str(world["data"]), "--output", str(ref), "--exclude",
                                   "207", "--count", "9", "--seed", seed, "--overwrite",
                                   "--quiet"]) == 0
        before = set(evals.glob("*.json")) if evals.exists() else set()
        out = tmp_path / f"run-{seed}"
        assert erase_class.main(args(world, out, "--set", f"eval.fid_reference={ref}")) == 0
        # the base model was scored again, against this build
        assert len(set(evals.glob("*.json")) - before) == 1
        scores.append(json.loads((out / "metrics.json").read_text())["before"]["fid"])
    assert scores[0] != scores[1]


def test_a_dit_without_learned_sigma_erases_end_to_end(world, tmp_path, monkeypatch):
    # out_channels == in_channels: no sigma
    model = build_pipeline(tmp_path / "fixed-dit", out_channels=4)
    # FID and the rest: the model's samples are not its concern
    monkeypatch.setattr(ImageNetScorer, "fidelity",
                        lambda self, samples, c, classes=None: dict.fromkeys(FIDELITY, 1.0))
    out = tmp_path / "run"
    assert erase_class.main(args(world, out, "--model", str(model))) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert "fixed variance" in m["protocol"]["sampler"]
    assert 0 <= m["after"]["forget_accuracy"] <= 1
    assert all(math.isfinite(r["forget_loss"])
               for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()))
    pipe = DiTPipeline.from_pretrained(out / "model")
    assert pipe(class_labels=[207], num_inference_steps=2,
                output_type="np").images.shape == (1, 16, 16, 3)


def test_a_10_class_model_maps_folders_through_its_labels_and_takes_its_own_classifier(
        world, tmp_path, monkeypatch):
    model = build_pipeline(tmp_path / "dit-10", labels=LABELS_10)
    cfg = load_config("imagenet", ["model.source=diffusers", f"model.path={model}",
                                   f"data.path={world['data']}"])
    files = scan(world["data"], classes_of(cfg))
    assert {c: fs[0].parent.name for c, fs in files.items()} == {  # not the sorted synsets' order
        0: "n01443537", 1: "n02099601", 2: "n01440764", 3: "n02085620"}
    classifier = build_classifier(tmp_path / "classifier-10.safetensors", num_classes=10, always=1)
    reference = tmp_path / "reference"
    assert fid_reference.main(["--data", str(world["data"]), "--output", str(reference),
                               "--exclude", "golden retriever", "--quiet"]) == 0
    # FID and the rest do not depend on class ids
    monkeypatch.setattr(ImageNetScorer, "fidelity",
                        lambda self, samples, c, classes=None: dict.fromkeys(FIDELITY, 1.0))
    out = tmp_path / "run"
    assert erase_class.main(args(world, out, "--model", str(model), "--set",
                                 f"eval.fa_weights={classifier}", "--set",
                                 f"eval.fid_reference={reference}")) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["forget_class"] == 1
    assert m["class_name"] == "golden retriever"
    assert m["before"]["forget_accuracy"] == 1.0
    # built without golden retriever: its folder, not index 1
    assert "WARNING" not in m["protocol"]["reference"]
    assert DiTPipeline.from_pretrained(out / "model").get_label_ids(["golden retriever"]) == [1]


def _rewrite_in_place(path: Path, write) -> None:
    """Rewrite a file at the same path to the same size, then put its modification time back."""
    st = path.stat()
    write(path)
    assert path.stat().st_size == st.st_size
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_cached_scores_latents_and_model_ids_follow_content_not_paths(world, tmp_path, monkeypatch):
    # FID's own cache: the next test
    monkeypatch.setattr(ImageNetScorer, "fidelity",
                        lambda self, samples, c, classes=None: dict.fromkeys(FIDELITY, 1.0))
    model, data = tmp_path / "dit", tmp_path / "train"
    shutil.copytree(world["model"], model)
    shutil.copytree(world["data"], data)
    classifier = build_classifier(tmp_path / "classifier.safetensors", always=207)
    argv = args(world, tmp_path / "o")
    sets = [argv[i + 1] for i, x in enumerate(argv) if x == "--set"]
    cfg = load_config("imagenet", ["model.source=diffusers", f"model.path={model}",
                                   f"data.path={data}", *sets, f"eval.fa_weights={classifier}"])
    w = prepare(cfg, progress=False)
    real = w.real_data(207, cfg, progress=False)
    assert evaluation.evaluate_base(w, cfg, 207, progress=False,
                                    job=tmp_path)["forget_accuracy"] == 1.0
    # now it never says golden retriever
    _rewrite_in_place(classifier, lambda p: build_classifier(p, always=0))
    w = prepare(cfg, progress=False)
    assert evaluation.evaluate_base(w, cfg, 207, progress=False,
                                    job=tmp_path)["forget_accuracy"] == 0.0

    # a forget image replaced by a grey one of the same size
    image = sorted((data / SYNSETS[0]).iterdir())[0]

    def grey(p):
        size = p.stat().st_size
        Image.new("RGB", (24, 20), "gray").save(p, format="JPEG")
        # JPEG readers stop at the end-of-image marker
        p.write_bytes(p.read_bytes().ljust(size, b"\0"))

    _rewrite_in_place(image, grey)
    again = prepare(cfg, progress=False).real_data(207, cfg, progress=False)
    assert again.key != real.key
    assert not torch.equal(again.forget_x, real.forget_x)

    weights = model / "transformer" / "diffusion_pytorch_model.safetensors"
    _rewrite_in_place(weights, lambda p: save_file({k: v * 2 for k, v in load_file(str(p)).items()},
                                                   str(p), metadata={"format": "pt"}))
    assert prepare(cfg, progress=False).model_id != w.model_id


def test_reference_statistics_follow_the_content_of_the_extractor_weights(world, tmp_path,
                                                                          monkeypatch):
    # Inception's 64-d layer instead of the 2048-d one: the same code path and cache, without
    # minutes of sqrtm on CPU
    monkeypatch.setattr(torch_fidelity, "calculate_metrics",
                        functools.partial(torch_fidelity.calculate_metrics, feature_layer_fid="64"))
    cache = Path(os.environ["DUALERASE_HOME"]) / "fid"
    inception = build_inception(tmp_path / "inception.pth", seed=1)
    samples = torch.randint(0, 256, (6, 3, 16, 16), generator=torch.Generator().manual_seed(0),
                            dtype=torch.uint8)

    def fid(cache_root):
        return ImageNetScorer(timm.create_model("test_resnet"), size=32,
                              reference=world["reference"], extractor="inception-v3-compat",
                              extractor_weights=str(inception), cache_root=cache_root,
                              name="test_resnet").fidelity(samples, 207)["fid"]

    first = fid(cache)
    # rebuilt in place: other features
    _rewrite_in_place(inception, lambda p: build_inception(p, seed=2))
    kept = set(cache.iterdir())
    second = fid(cache)
    # the reference statistics were computed again, with the new weights
    assert set(cache.iterdir()) - kept
    fresh = fid(tmp_path / "fresh-cache")
    assert second == fresh  # exactly what a fresh cache gives
    assert fresh != first
