"""Reports: the before/after sample grid, sample files, the terminal summary."""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from dualerase.storage import atomic_path, replace_folder


def _tile(images: torch.Tensor, scale: int, gap: int = 2) -> Image.Image:
    """A row of uint8 (N, C, H, W) images, upscaled by `scale` with nearest-neighbour, `gap` white pixels apart."""
    size = images.shape[-1] * scale
    row = Image.new("RGB", (len(images) * (size + gap) - gap, size), "white")
    for i, image in enumerate(images):
        arr = image.permute(1, 2, 0).numpy()
        img = Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr).convert("RGB")
        row.paste(img.resize((size, size), Image.NEAREST), (i * (size + gap), 0))
    return row


def sample_grid(panels: dict[str, torch.Tensor], labels: torch.Tensor, class_names: list[str], *,
                marked: int | None = None, scale: int | None = None) -> Image.Image:
    """One row per class, one column block per panel (e.g. "before", "after"); the `marked` row framed in red.

    Each panel holds uint8 images in the order of `labels`; small images are upscaled to about 32 px (or by `scale`).
    """
    classes = sorted(set(labels.tolist()))
    first = next(iter(panels.values()))
    scale = scale or max(1, 32 // first.shape[-1])
    per_class = int((labels == classes[0]).sum())
    cell = first.shape[-1] * scale
    names = {c: class_names[c] + ("  (erased)" if c == marked else "") for c in classes}
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength  # the font the text is drawn in
    gap, head_h, pad = 16, 22, 3
    label_w = 4 + math.ceil(max(measure(n) for n in names.values())) + gap  # the longest label fits
    tiles_w = per_class * (cell + 2) - 2
    panel_w = max([tiles_w] + [math.ceil(measure(title)) for title in panels])  # and the longest title
    width = label_w + len(panels) * (panel_w + gap)
    height = head_h + len(classes) * (cell + 2 * pad)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for j, title in enumerate(panels):
        draw.text((label_w + j * (panel_w + gap), 4), title, fill="black")
    for i, c in enumerate(classes):
        y = head_h + i * (cell + 2 * pad) + pad
        draw.text((4, y + cell // 2 - 6), names[c], fill="red" if c == marked else "black")
        for j, images in enumerate(panels.values()):
            x = label_w + j * (panel_w + gap)
            canvas.paste(_tile(images[labels == c], scale), (x, y))
            if c == marked:
                draw.rectangle([x - 2, y - 2, x + tiles_w + 1, y + cell + 1], outline="red", width=2)
    return canvas


def save_image(image: Image.Image, path: Path) -> None:
    with atomic_path(path) as tmp:
        image.save(tmp)


def save_samples(folder: Path, sets: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Each named set of uint8 (N, C, H, W) samples with labels as `<name>/<index>.png` and as an ADM-style
    `<name>.npz` (arr_0: uint8 NHWC images, arr_1: labels), the files reference evaluators read; written into a
    temporary folder, then swapped in."""
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for name, (images, labels) in sets.items():
        (tmp / name).mkdir(parents=True)
        arr = images.permute(0, 2, 3, 1).numpy()
        for i, image in enumerate(arr):
            Image.fromarray(image[..., 0] if image.shape[2] == 1 else image).save(tmp / name / f"{i:06d}.png")
        np.savez(tmp / f"{name}.npz", arr_0=arr, arr_1=labels.numpy())
    replace_folder(tmp, folder)


def protocol_line(p: dict) -> str:
    """The protocol of a set of numbers, in one line."""
    precision = f", {p['precision']}" if "precision" in p else ""
    spacing = f" ({p['timestep_spacing']} spacing)" if "timestep_spacing" in p else ""
    batches = f", noise drawn per batch of {p['sample_batch_size']}" if "sample_batch_size" in p else ""
    channels = f" on {p['guidance_channels']} channel(s)" if p.get("guidance_channels", "all") != "all" else ""
    software = ("; " + ", ".join(f"{k} {v}" for k, v in p["versions"].items()) + f", on {p['device']}"
                if "versions" in p else "")
    model = (f", model: {p['embedders'].split(' (')[0]} embedders, timestep shift {p['timestep_shift']}, LayerNorm eps "
             f"{p['norm_eps']:g}, {p['model_parameters'] / 1e6:.4g}M parameters" if "embedders" in p else "")
    if "embedders_tied_within" in p:
        model = model.replace(" embedders,", f" embedders ({p['embedders_tied_within']}),", 1)
    rule = f" (FA counts: {p['forget_rule']})" if "forget_rule" in p else ""
    fast = "FAST (for quick looks only; published comparisons need the full protocol), " \
        if p.get("protocol", "full") != "full" else ""
    return (f"{fast}{p['sampler']}, {p['steps']} steps{spacing}{batches}, guidance {p['guidance']}{channels}"
            f"{precision}{model}, "
            f"{p['forget_samples']} forget / "
            f"{p['retain_samples']} retain samples, FID reference {p['reference']}, features {p['feature_extractor']}, "
            f"classifier {p['classifier']}{rule}, seed {p['seed']}{software}")


def summary(m: dict) -> str:
    """The terminal summary of one erasure."""
    rows = [("forget accuracy (lower is better)", "forget_accuracy", "{:.3f}"),
            ("  by the published top-class rule", "forget_accuracy_published", "{:.3f}"),
            ("  called 'not a digit'", "forget_not_a_class", "{:.3f}"),
            ("forget-class probability", "forget_probability", "{:.3f}"),
            ("forget-class entropy (nats)", "forget_entropy", "{:.3f}"),
            ("retain accuracy", "retain_accuracy", "{:.3f}"),
            (f"FID ({m['protocol']['feature_extractor'].split(' ')[0]})", "fid", "{:.3f}")]
    # a row only where the scores have it (an older run has no published-rule FA; only the digits classifier has a
    # "not a digit" class); a FID that is not finite still shows, as n/a
    rows = [r for r in rows if r[1] == "fid" or any(m[side].get(r[1]) is not None for side in ("before", "after"))]
    t = m["timings"]
    std = m.get("std")
    seeds = f"seeds {', '.join(map(str, m['seeds']))} (mean +- std)" if std else f"seed {m['seed']}"

    def cell(side, key, fmt):
        if m[side].get(key) is None:  # a non-finite FID: its reason is printed below the table
            return "n/a"
        if not std:
            return fmt.format(m[side][key])
        spread = std[side][key]  # None when only one trial had a finite value
        return fmt.format(m[side][key]) + " +- " + ("n/a" if spread is None else fmt.format(spread))

    width = max([20 if std else 10] + [len(cell(side, key, fmt)) + 2 for side in ("before", "after")
                                       for _, key, fmt in rows])  # a huge number never runs into its neighbour
    limit = m.get("outer_steps_limit", m["outer_steps"])
    stopped = f" (of {limit}: the forget-accuracy probe stopped it)" if m["outer_steps"] < limit else ""
    lines = [f"Erased class {m['forget_class']} ({m['class_name']}) with {m['method']}, {m['optimizer']} optimizer(s), "
             f"{seeds}: {m['outer_steps']} outer steps{stopped} in {t['erase_s']:.1f} s "
             f"({t['erase_steps_per_s']:.1f} steps/s)",
             f"{'':36s}{'before':>{width}s}{'after':>{width}s}"]
    lines += [f"{title:36s}{cell('before', key, fmt):>{width}s}{cell('after', key, fmt):>{width}s}"
              for title, key, fmt in rows]
    lines += [f"FID {side}: {m[side]['fid_error']}" for side in ("before", "after") if m[side].get("fid_error")]
    lines.append("protocol: " + protocol_line(m["protocol"]))
    return "\n".join(lines)
