"""Steps of benchmarks/gpu_run.sh: erase-class end to end on the tiny stand-ins, kill -9 and resume,
the summary."""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
# torch, diffusers and the project are imported inside the steps that use them: the summary starts
# in a blink.

# Outer steps, checkpoint interval and the log line count at which the run is killed: on CUDA the
# tiny model takes many steps per second, so the run is long enough for the kill to land
# mid-erasure; on CPU (--tiny) it is short.
LONG = {"cuda": (300, 20, 100), "tiny": (30, 5, 12)}
WEIGHTS = Path("model") / "transformer" / "diffusion_pytorch_model.safetensors"


def world(work: Path) -> dict:
    """The stand-ins under work/world, built once and shared by the steps."""
    from tiny_imagenet import build_world

    base = work / "world"
    done = base / "world.json"
    if done.exists():
        return {k: Path(v) for k, v in json.loads(done.read_text()).items()}
    base.mkdir(parents=True, exist_ok=True)
    w = build_world(base)
    done.write_text(json.dumps({k: str(v) for k, v in w.items()}))
    return w


def long_args(w: dict, out: Path, tiny: bool, *extra: str) -> list[str]:
    """erase-class arguments of the long run that e2e and resume share."""
    from tiny_imagenet import erase_args

    steps, every, _ = LONG["tiny" if tiny else "cuda"]
    return erase_args(w, out, "--set", f"erase.outer_steps={steps}", "--set",
                      f"erase.checkpoint_every={every}", *extra)


def finite(x) -> bool:
    """True for a finite real number."""
    return isinstance(x, (int, float)) and math.isfinite(x)


def write(path: Path, data: dict) -> None:
    """Write `data` as indented JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def e2e(work: Path, tiny: bool) -> dict:
    """erase-class on the stand-ins, then DiTPipeline.from_pretrained on its model folder samples
    two steps."""
    import torch
    from diffusers import DiTPipeline

    from dualerase.cli import erase_class
    from dualerase.launch import processes

    device = "cpu" if tiny else "cuda"
    w = world(work)
    out = work / "e2e"
    t0 = time.perf_counter()
    rc = erase_class.main(long_args(w, out, tiny))
    res = {"rc": rc, "seconds": time.perf_counter() - t0, "erase_device": str(processes().device)}
    metrics = (json.loads((out / "metrics.json").read_text()) if (out / "metrics.json").exists()
               else {})
    for side in ("before", "after"):
        res[side] = {k: metrics.get(side, {}).get(k)
                     for k in ("forget_accuracy", "retain_accuracy", "fid")}
    res["timings"] = metrics.get("timings")
    checks = {"rc 0": rc == 0, f"erased on {device}": res["erase_device"].startswith(device),
              "FA and FID finite": all(finite(res[s][k]) for s in ("before", "after")
                                       for k in ("forget_accuracy", "fid")),
              "model/ exists": (out / "model" / "model_index.json").exists()}
    if checks["model/ exists"]:
        pipe = DiTPipeline.from_pretrained(out / "model").to(device)
        gen = torch.Generator(device).manual_seed(0)
        images = pipe(class_labels=pipe.get_label_ids(["golden retriever"]), num_inference_steps=2,
                      generator=gen, output_type="np").images
        res["pipeline_images"] = list(images.shape)
        checks["DiTPipeline loads and samples"] = bool(images.shape == (1, 16, 16, 3)
                                                       and (images == images).all())
    if device == "cuda":
        res["cuda_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    res["checks"] = checks
    res["ok"] = all(checks.values())
    return res


def resume(work: Path, tiny: bool) -> dict:
    """SIGKILL an erase-class run mid-erasure, resume it with --resume latest, compare with an
    uninterrupted run."""
    from safetensors.torch import load_file

    from dualerase.cli import erase_class

    steps, _, kill_at = LONG["tiny" if tiny else "cuda"]
    w = world(work)
    # the e2e step's run has the same arguments; made here when that step did not finish
    reference = work / "e2e"
    if not (reference / "metrics.json").exists():
        reference = work / "resume-reference"
        assert erase_class.main(long_args(w, reference, tiny)) == 0, \
            "uninterrupted reference run failed"
    out = work / "resume"
    path = os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    err_log = work / "killed-run.stderr"
    with open(err_log, "w") as err_file:
        proc = subprocess.Popen([sys.executable, "-m", "dualerase.cli.erase_class",
                                 *long_args(w, out, tiny)],
                                env=env, stdout=subprocess.DEVNULL, stderr=err_file)
    log = out / "log.jsonl"
    t0 = time.perf_counter()
    lines = 0
    while lines < kill_at:
        if proc.poll() is not None:
            raise RuntimeError(f"the run ended (rc {proc.returncode}) before the kill: "
                               f"{err_log.read_text()[-2000:]}")
        time.sleep(0.02)
        lines = len(log.read_text().splitlines()) if log.exists() else 0
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    res = {"outer_steps": steps, "kill_requested_at": kill_at,
           "killed_after_s": time.perf_counter() - t0,
           "log_lines_at_kill": len(log.read_text().splitlines()),
           "checkpoints_at_kill": sorted((p.name for p in out.glob("checkpoint-*")),
                                          key=lambda n: int(n.split("-")[1])),
           "metrics_absent_at_kill": not (out / "metrics.json").exists()}
    t1 = time.perf_counter()
    res["resume_rc"] = erase_class.main(long_args(w, out, tiny, "--resume", "latest"))
    res["resume_seconds"] = time.perf_counter() - t1
    a, b = load_file(str(reference / WEIGHTS)), load_file(str(out / WEIGHTS))
    diffs = [(a[k].double() - b[k].double()).abs().max().item() for k in a]
    res["max_abs_dw"] = max(diffs)
    res["max_abs_w"] = max(a[k].abs().max().item() for k in a)
    res["tensors_bitwise_equal"] = f"{sum(d == 0 for d in diffs)}/{len(diffs)}"
    res["log_steps_complete"] = [json.loads(x)["step"] for x in log.read_text().splitlines()] == \
        list(range(steps))
    res["ok"] = bool(res["resume_rc"] == 0 and res["metrics_absent_at_kill"]
                     and res["checkpoints_at_kill"] and res["log_lines_at_kill"] < steps
                     and res["log_steps_complete"] and finite(res["max_abs_dw"]))
    return res


def load(path: Path) -> dict | None:
    """JSON of `path`, or None when missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def num(x, fmt: str = ".3g") -> str:
    """A number formatted, or a dash."""
    return "–" if x is None else format(x, fmt)


def pct(x) -> str:
    """A fraction as a percentage, or a dash."""
    return "–" if x is None else f"{100 * x:.1f}%"


def summary(work: Path, out: Path) -> str:
    """summary.md: the key numbers of every step in tables; results.json: everything the steps
    wrote."""
    steps = [line.split("\t") for line in (work / "steps.tsv").read_text().splitlines()] \
        if (work / "steps.tsv").exists() else []
    bf16, tf32 = load(work / "check-bf16.json"), load(work / "check-tf32.json")
    e2e_res, resume_res = load(out / "e2e.json"), load(out / "resume.json")
    md = ["# GPU run summary", ""]
    if bf16:
        md += [f"Device: {bf16['device']}; torch {bf16['torch']}, CUDA {bf16['cuda']}; DiT "
               f"{bf16['params']:,} params, {bf16['fwd_gflop']:.4g} GFLOP/forward image; MFU "
               f"against {num(bf16['peak_tflops'], '.0f')} TFLOP/s dense bf16.", ""]
    md += ["## Steps", "", "| step | status | seconds |", "|---|---|---|"]
    md += [f"| {s[0]} | {s[1]} | {s[2]} |" for s in steps] + [""]
    if bf16:
        md += ["## Erase and sampling throughput (gpu_check.py, bf16 autocast)", "",
               "| erase batch | grad ckpt | outer steps/s | img/s | TFLOP/s | MFU | peak GiB |",
               "|---|---|---|---|---|---|---|"]
        for r in bf16["erase"]:
            if "error" in r:
                md.append(f"| {r['batch']} | {'on' if r['ckpt'] else 'off'} | {r['error']} | | | | "
                          f"{r['peak_gib']:.2f} |")
                continue
            md.append(f"| {r['batch']} | {'on' if r['ckpt'] else 'off'} | {r['steps_per_s']:.3g} | "
                      f"{r['img_per_s']:.3g} "
                      f"| {r['tflops']:.3g} | {pct(r['mfu'])} | {r['peak_gib']:.2f} |")
        s, v = bf16["sampling"], bf16["vae"]
        md += ["", f"Sampling (guided, batch {s['batch']}, DiT only): "
               f"{s['img_steps_per_s']:.4g} image-steps/s, {s['img_per_s']:.4g} img/s at "
               f"{s['extrapolated_steps']} steps (extrapolated), MFU {pct(s['mfu'])}, peak "
               f"{s['peak_gib']:.2f} GiB."]
        if v:
            md.append(f"VAE decode: {v['img_per_s']:.4g} img/s (peak {v['peak_gib']:.2f} GiB); "
                      f"sampling + decode {v['img_per_s_with_sampling']:.4g} img/s.")
        md.append(f"Peak memory over all phases: "
                  f"{max([r['peak_gib'] for r in bf16['erase']] + [s['peak_gib']]):.2f} GiB.")
        md.append("")
    if bf16 and tf32:
        ours = next((r for r in bf16["erase"] if r["batch"] == 1 and not r["ckpt"]
                     and "steps_per_s" in r), None)
        theirs = next((r for r in tf32["erase"] if "steps_per_s" in r), None)
        ratio = lambda a, b: None if a is None or b is None else a / b  # noqa: E731
        md += ["## Published settings (fp32, TF32 matmuls on, erase batch 1) against ours (bf16)",
               "", "| | published | ours (bf16) | published / ours |", "|---|---|---|---|",
               f"| erase outer steps/s, batch 1, no ckpt | {num(theirs and theirs['steps_per_s'])} "
               f"| {num(ours and ours['steps_per_s'])} | "
               f"{num(ratio(theirs and theirs['steps_per_s'], ours and ours['steps_per_s']))} |",
               f"| sampling img/s (batch {tf32['sampling']['batch']}, "
               f"{tf32['sampling']['extrapolated_steps']} steps) | "
               f"{num(tf32['sampling']['img_per_s'])} | {num(bf16['sampling']['img_per_s'])} | "
               f"{num(ratio(tf32['sampling']['img_per_s'], bf16['sampling']['img_per_s']))} |", ""]
    if e2e_res:
        b, a = e2e_res.get("before", {}), e2e_res.get("after", {})
        md += ["## erase-class end to end (tiny stand-ins)", "",
               f"On {e2e_res.get('erase_device')}: rc {e2e_res.get('rc')}, "
               f"{num(e2e_res.get('seconds'), '.1f')} s. FA {num(b.get('forget_accuracy'))} -> "
               f"{num(a.get('forget_accuracy'))}, FID {num(b.get('fid'))} -> {num(a.get('fid'))}. "
               "Checks: " + ", ".join(f"{k}: {'ok' if v else 'FAILED'}"
                                      for k, v in e2e_res.get("checks", {}).items()), ""]
    if resume_res:
        r = resume_res
        md += ["## kill -9 mid-erasure, then --resume latest", "",
               f"{r.get('outer_steps')} outer steps, killed at {r.get('log_lines_at_kill')} logged "
               f"steps (checkpoints {', '.join(r.get('checkpoints_at_kill', []))}); resume rc "
               f"{r.get('resume_rc')}. Max |dw| against the uninterrupted run: "
               f"{num(r.get('max_abs_dw'))} (max |w| {num(r.get('max_abs_w'))}; bitwise equal "
               f"tensors {r.get('tensors_bitwise_equal')}). {'ok' if r.get('ok') else 'FAILED'}.",
               ""]
    pytest_txt = out / "pytest.txt"
    if pytest_txt.exists():
        tail = [x for x in pytest_txt.read_text().splitlines() if x.strip()][-1:]
        md += ["## pytest -m cuda", "", f"`{tail[0] if tail else 'no output'}`", ""]
    text = "\n".join(md)
    (out / "summary.md").write_text(text)
    write(out / "results.json", {"steps": steps, "gpu_check_bf16": bf16,
                                 "gpu_check_published": tf32, "e2e": e2e_res, "resume": resume_res})
    return text


def main(argv=None) -> int:
    """Run one step: e2e, resume (each writes --json) or summary."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("step", choices=["e2e", "resume", "summary"])
    p.add_argument("--work", type=Path, required=True, help="scratch folder shared by the steps")
    p.add_argument("--out", type=Path, required=True, help="results folder")
    p.add_argument("--tiny", action="store_true", help="CPU dry run: short erasure, no CUDA checks")
    args = p.parse_args(argv)
    if args.step == "summary":
        print(summary(args.work, args.out))
        return 0
    try:
        res = (e2e if args.step == "e2e" else resume)(args.work, args.tiny)
    except Exception as err:  # recorded, then reported as this step's failure
        res = {"ok": False, "error": f"{type(err).__name__}: {err}"}
        import traceback
        traceback.print_exc()
    write(args.out / f"{args.step}.json", res)
    print(json.dumps(res, indent=2, default=str))
    return 0 if res.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
