"""One-GPU throughput, memory and MFU check of DiT-XL/2 erasure (DualOptim) and guided sampling,
random weights."""
from __future__ import annotations

import argparse
import itertools
import json
import platform
import resource
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusers import AutoencoderKL  # noqa: E402

from benchmarks import erase_loop  # noqa: E402
from benchmarks import versus_ditpipeline as versus  # noqa: E402
from benchmarks.common import table  # noqa: E402
from dualerase.models.dit import build_dit, make_scheduler  # noqa: E402
from dualerase.models.loss import DiTLoss
from dualerase.sampling import sample  # noqa: E402
from dualerase.unlearn.dualoptim import DivergenceError, EraseConfig, make_optimizers, unlearn  # noqa: E402
from dualerase.unlearn.methods import MethodConfig, make_method  # noqa: E402

REFERENCE_GFLOP = 237.0  # DiT paper: 118.6 GMAC per DiT-XL/2 forward at 256 px, i.e. ~237 GFLOP
# Dense bf16 peaks (TFLOP/s, no sparsity); the first substring found in the device name wins.
PEAK_BF16_TFLOPS = [("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H200 NVL", 835.0), ("H100", 989.0),
                    ("H200", 989.0), ("GH200", 989.0), ("A100", 312.0), ("L40S", 362.0)]

XL = dict(num_classes=1000, sample_size=32, in_channels=4, patch_size=2, layers=28, heads=16,
          head_dim=72)
TINY = dict(num_classes=10, sample_size=8, in_channels=4, patch_size=2, layers=2, heads=2,
            head_dim=16)
VAE_XL = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32,
              sample_size=256)
VAE_TINY = dict(block_out_channels=(32, 32), layers_per_block=1, norm_num_groups=32, sample_size=16)


def parse_args(argv=None):
    """Command-line flags; defaults depend on --cpu-tiny."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--cpu-tiny", action="store_true",
                   help="run a tiny DiT and VAE on CPU (smoke test of this script; numbers mean "
                        "nothing)")
    p.add_argument("--batch-size", type=int, nargs="+", default=None,
                   help="erase batch sizes to time (forget and retain batch each); default 1 8 32 "
                        "(tiny: 1 4)")
    p.add_argument("--grad-ckpt", choices=["off", "on", "both"], default="both",
                   help="gradient checkpointing during erase steps (default: time both)")
    p.add_argument("--mask-density", type=float, default=0.5,
                   help="share of coordinates a random SFR-on-style mask lets forget steps change; "
                        "0 = no mask (plain GA); the cost of masking does not depend on which "
                        "coordinates are kept")
    p.add_argument("--warmup", type=int, default=3,
                   help="untimed outer steps / sampling runs before timing")
    p.add_argument("--erase-steps", type=int, default=None,
                   help="timed outer steps per config (default 10, tiny 3)")
    p.add_argument("--sample-batch", type=int, default=None,
                   help="images per sampling batch (default 64, tiny 4)")
    p.add_argument("--sample-steps", type=int, default=None,
                   help="timed denoising steps of the sampling run (default 10, tiny 3)")
    p.add_argument("--extrapolate-steps", type=int, default=250,
                   help="steps of the full sampling run that images/s is extrapolated to (DiT's "
                        "250-step DDPM)")
    p.add_argument("--guidance", type=float, default=1.5,
                   help="classifier-free guidance scale (two forwards/step)")
    p.add_argument("--dtype", choices=["bf16", "fp32", "fp32-tf32"], default="bf16",
                   help="bf16: torch.autocast bfloat16 around fp32 weights; fp32: no autocast, "
                        "TF32 matmuls off; fp32-tf32: no autocast, TF32 matmuls on (the published "
                        "DiT code's setting)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="dense peak TFLOP/s of the device for MFU (default: looked up from the "
                        "device name)")
    p.add_argument("--no-vae", action="store_true", help="skip building and timing the VAE decoder")
    p.add_argument("--vs-ditpipeline", type=int, nargs="?", const=3, default=0, metavar="REPEATS",
                   help="also time our sampler against diffusers' DiTPipeline on the same "
                        "1000-class model, VAE and noise (DDIM eta 0, --sample-batch, "
                        "--sample-steps, --guidance), REPEATS interleaved runs each (default 3)")
    p.add_argument("--vs-bare-loop", type=int, nargs="?", const=3, default=0, metavar="REPEATS",
                   help="also time `unlearn` against a bare PyTorch loop doing the same math "
                        "(benchmarks/erase_loop.py: dual AdamW, GA forget step, 50%% mask, clip) "
                        "at the first --batch-size for --erase-steps outer steps, REPEATS "
                        "interleaved runs each (default 3)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights and data")
    p.add_argument("--json", type=Path, default=None,
                   help="also write the results as JSON to this file")
    args = p.parse_args(argv)
    tiny = args.cpu_tiny
    args.batch_size = args.batch_size or ([1, 4] if tiny else [1, 8, 32])
    args.erase_steps = args.erase_steps or (3 if tiny else 10)
    args.sample_batch = args.sample_batch or (4 if tiny else 64)
    args.sample_steps = args.sample_steps or (3 if tiny else 10)
    if tiny:
        args.warmup = min(args.warmup, 1)
    return args


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    """Start a new peak-memory window for the next phase."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float:
    """Peak allocated GPU memory since the last reset, or the process's peak RSS on CPU, in GiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def peak_tflops(device: torch.device, override: float | None) -> tuple[float | None, str]:
    """Dense bf16 peak of the device in TFLOP/s and where the figure comes from."""
    if override is not None:
        return override, "--peak-tflops"
    if device.type != "cuda":
        return None, "unknown (CPU)"
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_TFLOPS:
        if key in name:
            return value, f"table entry {key!r}"
    return None, f"unknown device {name!r} (pass --peak-tflops)"


def analytic_gflop(cfg: dict) -> float:
    """Forward GFLOP per image of a DiT (2 FLOP per MAC): linears and attention of every block,
    patch in and out."""
    d = cfg["heads"] * cfg["head_dim"]
    n = (cfg["sample_size"] // cfg["patch_size"]) ** 2
    patch_in = cfg["patch_size"] ** 2 * cfg["in_channels"]
    block = 2 * n * 12 * d * d + 4 * n * n * d  # qkv + out (4 d^2), MLP (8 d^2); QK^T and AV
    # patch_in in, 2 * patch_in out (learned sigma)
    return (cfg["layers"] * block + 2 * n * d * 3 * patch_in) / 1e9


def count_flops(fn) -> float:
    """FLOPs torch's FlopCounterMode sees while running `fn` (matmuls, convolutions, fused
    attention)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def autocast(device: torch.device, dtype: str):
    """bf16 autocast on the device, or a disabled context for fp32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16")


def build_vae(cfg: dict) -> AutoencoderKL:
    """AutoencoderKL with sd-vae-ft-ema's architecture (or a tiny one), random weights."""
    blocks = len(cfg["block_out_channels"])
    return AutoencoderKL(in_channels=3, out_channels=3,
                         down_block_types=("DownEncoderBlock2D",) * blocks,
                         up_block_types=("UpDecoderBlock2D",) * blocks,
                         block_out_channels=cfg["block_out_channels"],
                         layers_per_block=cfg["layers_per_block"], act_fn="silu", latent_channels=4,
                         norm_num_groups=cfg["norm_num_groups"], sample_size=cfg["sample_size"],
                         scaling_factor=0.18215)


def random_mask(model: torch.nn.Module, density: float,
                seed: int) -> dict[str, torch.Tensor] | None:
    """A Bernoulli(density) bool mask per parameter, standing in for SFR-on's Fisher mask; None for
    density 0."""
    if density <= 0:
        return None
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    return {n: torch.rand(p.shape, device=p.device, generator=gen) < density
            for n, p in model.named_parameters()}


def fixed_batches(cfg: dict, batch: int, label: int | None, device: torch.device, seed: int):
    """An endless iterator over one fixed (latents, labels) batch on the device (data loading is not
    timed)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg["in_channels"], cfg["sample_size"], cfg["sample_size"],
                    generator=gen)
    y = (torch.full((batch,), label) if label is not None
         else torch.randint(1, cfg["num_classes"], (batch,), generator=gen))
    return itertools.repeat((x.to(device), y.to(device)))


def time_erase(model, method, cfg: dict, batch: int, ckpt: bool, args, device, optimizers,
               mask) -> dict:
    """Time `unlearn` outer steps (one forget + one retain step each, dual AdamW) at one batch
    size."""
    if ckpt:
        model.enable_gradient_checkpointing()
    else:
        model.disable_gradient_checkpointing()
    forget = fixed_batches(cfg, batch, 0, device, args.seed)
    retain = fixed_batches(cfg, batch, None, device, args.seed + 1)
    reset_peak(device)
    result = {"batch": batch, "ckpt": ckpt}
    try:
        with autocast(device, args.dtype):
            unlearn(model, method, forget, retain,
                    EraseConfig(outer_steps=args.warmup, batch_size=batch),
                    mask=mask, optimizers=optimizers, progress=False)
            sync(device)
            start = time.perf_counter()
            unlearn(model, method, forget, retain,
                    EraseConfig(outer_steps=args.erase_steps, batch_size=batch),
                    mask=mask, optimizers=optimizers, progress=False)
            sync(device)
        result["seconds"] = (time.perf_counter() - start) / args.erase_steps
    except (DivergenceError, torch.OutOfMemoryError) as err:
        result["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:80]}"
    result["peak"] = peak_gib(device)
    model.disable_gradient_checkpointing()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def time_sampling(model, scheduler, cfg: dict, args, device) -> dict:
    """Time a guided sampling run of `sample_steps` denoising steps over one batch (no VAE)."""
    labels = torch.arange(args.sample_batch) % cfg["num_classes"]
    run = lambda steps: sample(model, scheduler, labels, num_steps=steps, guidance=args.guidance,  # noqa: E731
                               seed=args.seed, batch_size=args.sample_batch, progress=False)
    reset_peak(device)
    with autocast(device, args.dtype):
        for _ in range(max(args.warmup, 1)):
            run(2)
        sync(device)
        start = time.perf_counter()
        latents = run(args.sample_steps)
        sync(device)
    seconds = time.perf_counter() - start
    assert torch.isfinite(latents).all(), "sampling produced non-finite latents"
    return {"seconds_per_step": seconds / args.sample_steps, "peak": peak_gib(device),
            "latents": latents}


@torch.no_grad()
def time_vae(vae, latents: torch.Tensor, args, device) -> dict:
    """Time decoding one batch of latents to images with the VAE."""
    z = latents.to(device) / vae.config.scaling_factor
    reset_peak(device)
    with autocast(device, args.dtype):
        for _ in range(max(args.warmup, 1)):
            vae.decode(z)
        sync(device)
        start = time.perf_counter()
        images = vae.decode(z).sample
        sync(device)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak": peak_gib(device), "shape": tuple(images.shape)}


def time_versus(model, vae, cfg: dict, vae_cfg: dict, args, device) -> dict:
    """Our sampler against DiTPipeline with decoding; the model is rebuilt with 1000 classes if it
    has others (tiny) and a VAE is built if there is none (--no-vae)."""
    with torch.device(device):
        if cfg["num_classes"] != 1000:
            model = build_dit(**{**cfg, "num_classes": 1000}).to(device)
        vae = vae if vae is not None else build_vae(vae_cfg).to(device)
    return versus.compare(model, vae, versus.dit_scheduler("ddim"), batch=args.sample_batch,
                          steps=args.sample_steps, guidance=args.guidance,
                          repeats=args.vs_ditpipeline, seed=args.seed,
                          precision=lambda: autocast(device, args.dtype))


def fmt_mfu(tflops: float, peak: float | None) -> str:
    """Model FLOPs utilisation as a percentage string, or n/a without a known peak."""
    return f"{100 * tflops / peak:.1f}%" if peak else "n/a"


def erase_record(r: dict, fwd_gflop: float, peak: float | None) -> dict:
    """One erase configuration's numbers for --json."""
    out = {"batch": r["batch"], "ckpt": r["ckpt"], "peak_gib": r["peak"]}
    if "error" in r:
        return {**out, "error": r["error"]}
    tf = 2 * 3 * fwd_gflop * r["batch"] / r["seconds"] / 1e3
    return {**out, "steps_per_s": 1 / r["seconds"], "img_per_s": 2 * r["batch"] / r["seconds"],
            "tflops": tf, "mfu": tf / peak if peak else None}


def write_json(path: Path, data: dict) -> None:
    """Write `data` as indented JSON, creating the parent folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def main(argv=None) -> int:
    """Run every phase and print the protocol and the results table."""
    args = parse_args(argv)
    if args.cpu_tiny:
        device = torch.device("cpu")
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    else:
        print("no CUDA device: run on a GPU, or pass --cpu-tiny for a CPU smoke test",
              file=sys.stderr)
        return 2
    cfg, vae_cfg = (TINY, VAE_TINY) if args.cpu_tiny else (XL, VAE_XL)
    peak, peak_src = peak_tflops(device, args.peak_tflops)
    # float32 matmuls: TF32 tensor cores on or off (set_float32_matmul_precision)
    if args.dtype != "bf16":
        torch.set_float32_matmul_precision("high" if args.dtype == "fp32-tf32" else "highest")
    wall = time.perf_counter()
    torch.manual_seed(args.seed)

    reset_peak(device)
    t0 = time.perf_counter()
    with torch.device(device):
        model = build_dit(**cfg).to(device)
    sync(device)
    build_s = time.perf_counter() - t0
    build_peak = peak_gib(device)
    n_params = sum(p.numel() for p in model.parameters())
    # diffusers keeps a timestep + class embedder in every block; the original DiT shares one (675M
    # for XL/2).
    per_block_emb = sum(p.numel() for p in model.transformer_blocks[0].norm1.emb.parameters())
    shared_params = n_params - (len(model.transformer_blocks) - 1) * per_block_emb

    # FLOPs per forward image: reference figure, analytic count, and torch's counter on one real
    # forward (+ backward).
    scheduler = make_scheduler()
    loss = DiTLoss(scheduler)
    x1 = torch.randn(1, cfg["in_channels"], cfg["sample_size"], cfg["sample_size"], device=device)
    t1, y1 = torch.tensor([500], device=device), torch.tensor([0], device=device)
    with torch.no_grad():
        counted_fwd = count_flops(lambda: model(x1, t1, class_labels=y1)) / 1e9
    counted_train = count_flops(lambda: loss(model, (x1, y1)).backward()) / 1e9
    model.zero_grad(set_to_none=True)
    analytic = analytic_gflop(cfg)
    fwd_gflop = analytic if args.cpu_tiny else REFERENCE_GFLOP

    # (a) erase outer steps.
    method = make_method(MethodConfig(name="sfron" if args.mask_density > 0 else "ga"), loss,
                         forget_class=0, num_classes=cfg["num_classes"])
    mask = random_mask(model, args.mask_density, args.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizers = make_optimizers(params, EraseConfig())
    ckpts = {"off": [False], "on": [True], "both": [False, True]}[args.grad_ckpt]
    erase = [time_erase(model, method, cfg, b, c, args, device, optimizers, mask)
             for b in args.batch_size for c in ckpts]
    del optimizers, mask
    model.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.empty_cache()

    # (b) guided sampling, then (c) VAE decode of the sampled latents.
    samp = time_sampling(model, scheduler, cfg, args, device)
    vae = vae_res = None
    vae_gflop = None
    if not args.no_vae:
        with torch.device(device):
            vae = build_vae(vae_cfg).to(device)
        vae.eval()
        z1 = samp["latents"][:1].to(device)
        with torch.no_grad():
            vae_gflop = count_flops(lambda: vae.decode(z1)) / 1e9
        vae_res = time_vae(vae, samp["latents"], args, device)
    versus_res = (time_versus(model, vae, cfg, vae_cfg, args, device) if args.vs_ditpipeline
                  else None)
    loop_res = erase_loop.measure("DiT-XL/2" if not args.cpu_tiny else "tiny DiT", cfg,
                                  batch=args.batch_size[0], steps=args.erase_steps,
                                  repeats=args.vs_bare_loop, device=device.type,
                                  bf16=args.dtype == "bf16") if args.vs_bare_loop else None

    # Protocol.
    cpu = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu
    dtype_txt = {"bf16": "bf16 autocast, fp32 weights", "fp32": "fp32, TF32 matmuls off",
                 "fp32-tf32": "fp32 weights and activations, TF32 matmuls on"}[args.dtype]
    smoke = " (CPU TINY SMOKE TEST: numbers mean nothing)" if args.cpu_tiny else ""
    print("## DiT erase / sampling GPU check" + smoke)
    print()
    print(f"- torch {torch.__version__}, CUDA {torch.version.cuda}, python "
          f"{platform.python_version()}")
    print(f"- device: {dev_name}; peak assumed: "
          f"{f'{peak:.0f} TFLOP/s dense bf16' if peak else 'n/a'} ({peak_src})")
    print("- model: "
          f"{'tiny DiT ' + str(cfg) if args.cpu_tiny else 'DiT-XL/2, 256 px (32x32x4 latents)'}, "
          f"{n_params:,} params ({shared_params:,} with one shared timestep/class embedder as in "
          "the original DiT; diffusers keeps one per block), random weights; built in "
          f"{build_s:.1f} s, peak {build_peak:.2f} GiB")
    print(f"- precision: {dtype_txt}")
    print(f"- FLOPs per forward image: reference {REFERENCE_GFLOP:.0f} GFLOP (DiT-XL/2); analytic "
          f"{analytic:.4g} GFLOP; "
          f"FlopCounterMode {counted_fwd:.4g} GFLOP (forward), {counted_train:.4g} GFLOP "
          f"forward+backward of the training loss = {counted_train / counted_fwd:.2f}x forward. "
          f"MFU uses {fwd_gflop:.4g} GFLOP/forward, training step = 3x forward (checkpointing's "
          "recompute is not credited), guided sampling = 2 forwards per image per step")
    mask_txt = (f"random mask of density {args.mask_density} (SFR-on-style)"
                if args.mask_density > 0
                else "no mask (GA)")
    print("- erase: project `unlearn` loop, 1 forget (GA, clip 1.0) + 1 retain step per outer "
          "step, dual AdamW (lr 5e-5), "
          f"{mask_txt}; "
          f"batch sizes {args.batch_size}; {args.warmup} warm-up + {args.erase_steps} timed outer "
          "steps per config; includes the loop's per-update loss/grad-norm/finiteness syncs")
    print(f"- sampling: project `sample`, DDPM learned-range, guidance {args.guidance}, batch "
          f"{args.sample_batch} images "
          f"({2 * args.sample_batch if args.guidance != 1 else args.sample_batch} per forward), "
          f"{args.sample_steps} timed steps after warm-up; {args.extrapolate_steps}-step images/s "
          "is EXTRAPOLATED from the per-step time")
    if vae_res:
        print("- VAE: AutoencoderKL (sd-vae-ft-ema "
              f"architecture{' (tiny)' if args.cpu_tiny else ''}), random weights, decode of the "
              f"{args.sample_batch} sampled latents to {vae_res['shape']}; FlopCounterMode "
              f"{vae_gflop:.4g} GFLOP per decoded image")
    peak_txt = ("torch.cuda.max_memory_allocated, reset before each phase" if device.type == "cuda"
                else "process peak RSS (ru_maxrss, not per phase)")
    print(f"- peak memory: {peak_txt}")
    print()

    # Table.
    print("| phase | config | throughput | time | achieved TFLOP/s | MFU | peak mem (GiB) |")
    print("|---|---|---|---|---|---|---|")
    for r in erase:
        conf = f"bs {r['batch']}, ckpt {'on' if r['ckpt'] else 'off'}"
        if "error" in r:
            print(f"| erase | {conf} | failed: {r['error']} | | | | {r['peak']:.2f} |")
            continue
        tf = 2 * 3 * fwd_gflop * r["batch"] / r["seconds"] / 1e3
        print(f"| erase | {conf} | {1 / r['seconds']:.2f} outer steps/s "
              f"({2 * r['batch'] / r['seconds']:.1f} img/s) | {1e3 * r['seconds']:.1f} ms/outer "
              f"step | {tf:.4g} | {fmt_mfu(tf, peak)} | {r['peak']:.2f} |")
    step_s, b = samp["seconds_per_step"], args.sample_batch
    fwd_per_img = 2 if args.guidance != 1 else 1
    tf = fwd_per_img * fwd_gflop * b / step_s / 1e3
    print(f"| sampling, per step (DiT only) | {b} img, guided | {b / step_s:.1f} img-steps/s | "
          f"{1e3 * step_s:.1f} ms/step "
          f"| {tf:.4g} | {fmt_mfu(tf, peak)} | {samp['peak']:.2f} |")
    full = step_s * args.extrapolate_steps
    print(f"| sampling, {args.extrapolate_steps} steps EXTRAPOLATED (DiT only) | {b} img, guided | "
          f"{b / full:.3f} img/s "
          f"| {full:.1f} s/batch | | | |")
    if vae_res:
        vs = vae_res["seconds"]
        vtf = vae_gflop * b / vs / 1e3
        print(f"| VAE decode | {b} img | {b / vs:.1f} img/s | {1e3 * vs:.1f} ms/batch | {vtf:.4g} "
              f"| {fmt_mfu(vtf, peak)} "
              f"| {vae_res['peak']:.2f} |")
        print(f"| sampling, {args.extrapolate_steps} steps EXTRAPOLATED + VAE decode | {b} img, "
              f"guided | {b / (full + vs):.3f} img/s | {full + vs:.1f} s/batch | | | |")
    if versus_res:
        print()
        print(f"### Our sampler vs diffusers' DiTPipeline ({versus.SCHEDULERS['ddim']}; batch {b}, "
              f"{args.sample_steps} steps, guidance {args.guidance} on all channels, "
              f"{args.vs_ditpipeline} interleaved runs each after one untimed; noise + denoising + "
              "VAE decode + images to the host)")
        print()
        print("\n".join(versus.table(versus_res)))
        print()
        print(f"- {versus.summary(versus_res)}")
    if loop_res:
        print()
        print("### `unlearn` vs a bare PyTorch loop (same math: dual AdamW, GA forget step, 50% "
              f"mask, clip 1; {args.vs_bare_loop} interleaved runs each, median; {dtype_txt})")
        print()
        print(table([loop_res]))
    print()
    print(f"total wall time {time.perf_counter() - wall:.1f} s")
    if args.json:
        write_json(args.json, dict(
            device=dev_name, torch=torch.__version__, cuda=torch.version.cuda, dtype=args.dtype,
            params=n_params, fwd_gflop=fwd_gflop, peak_tflops=peak, build_peak_gib=build_peak,
            wall_s=time.perf_counter() - wall,
            erase=[erase_record(r, fwd_gflop, peak) for r in erase],
            sampling=dict(batch=b, guidance=args.guidance, seconds_per_step=step_s,
                          img_steps_per_s=b / step_s, tflops=tf, mfu=tf / peak if peak else None,
                          peak_gib=samp["peak"], extrapolated_steps=args.extrapolate_steps,
                          img_per_s=b / full),
            vae=None if not vae_res else dict(batch=b, seconds=vae_res["seconds"],
                                              img_per_s=b / vae_res["seconds"],
                                              peak_gib=vae_res["peak"],
                                              img_per_s_with_sampling=b / (full + vs)),
            versus_ditpipeline=versus_res, versus_bare_loop=loop_res))
    failed = [r for r in erase if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
