"""Reports: the before/after sample grid, sample files, the terminal summary, the protocol line."""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from dualerase.storage import atomic_path, replace_folder


def _tile(images: torch.Tensor, scale: int, gap: int = 2) -> Image.Image:
    """A row of uint8 (N, C, H, W) images, upscaled `scale` times (nearest), `gap` pixels apart."""
    size = images.shape[-1] * scale
    row = Image.new("RGB", (len(images) * (size + gap) - gap, size), "white")
    for i, image in enumerate(images):
        arr = image.permute(1, 2, 0).numpy()
        img = Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr).convert("RGB")
        row.paste(img.resize((size, size), Image.NEAREST), (i * (size + gap), 0))
    return row


def sample_grid(panels: dict[str, torch.Tensor], labels: torch.Tensor, class_names: list[str], *,
                marked: int | None = None, scale: int | None = None) -> Image.Image:
    """One row per class, one column block per panel (e.g. "before", "after"), as an image.

    Each panel holds uint8 images in the order of `labels`, named by `class_names`; small images are
    upscaled to about 32 px (or by `scale`). The `marked` row (the erased class) is framed in red.
    """
    classes = sorted(set(labels.tolist()))
    first = next(iter(panels.values()))
    scale = scale or max(1, 32 // first.shape[-1])
    per_class = int((labels == classes[0]).sum())
    cell = first.shape[-1] * scale
    names = {c: class_names[c] + ("  (erased)" if c == marked else "") for c in classes}
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength  # the font the text is drawn in
    gap, head_h, pad = 16, 22, 3
    # the longest label fits
    label_w = 4 + math.ceil(max(measure(n) for n in names.values())) + gap
    tiles_w = per_class * (cell + 2) - 2
    # and the longest title
    panel_w = max([tiles_w] + [math.ceil(measure(title)) for title in panels])
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
                draw.rectangle([x - 2, y - 2, x + tiles_w + 1, y + cell + 1], outline="red",
                               width=2)
    return canvas


def save_image(image: Image.Image, path: Path) -> None:
    """Save `image` at `path` atomically (its format from the suffix)."""
    with atomic_path(path) as tmp:
        image.save(tmp)


def save_samples(folder: Path, sets: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Write each named set of uint8 (N, C, H, W) samples and labels into `folder`.

    As `<name>/<index>.png` and as an ADM-style `<name>.npz` (arr_0: uint8 NHWC images, arr_1:
    labels), the files reference evaluators read; written into a temporary folder, swapped in."""
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for name, (images, labels) in sets.items():
        (tmp / name).mkdir(parents=True)
        arr = images.permute(0, 2, 3, 1).numpy()
        for i, image in enumerate(arr):
            Image.fromarray(image[..., 0] if image.shape[2] == 1 else image).save(
                tmp / name / f"{i:06d}.png")
        np.savez(tmp / f"{name}.npz", arr_0=arr, arr_1=labels.numpy())
    replace_folder(tmp, folder)


def protocol_line(p: dict) -> str:
    """The protocol `p` of a set of numbers (metrics.json's `protocol`), in one line."""
    precision = f", {p['precision']}" if "precision" in p else ""
    if "cpu_threads" in p and str(p.get("device", "cpu")).startswith("cpu"):
        precision += f", {p['cpu_threads']} CPU thread{'s' if p['cpu_threads'] != 1 else ''}"
    spacing = f" ({p['timestep_spacing']} spacing)" if "timestep_spacing" in p else ""
    batches = (f", noise drawn per batch of {p['sample_batch_size']}" if "sample_batch_size" in p
               else "")
    channels = (f" on {p['guidance_channels']} channel(s)"
                if p.get("guidance_channels", "all") != "all" else "")
    software = ("; " + ", ".join(f"{k} {v}" for k, v in p["versions"].items())
                + f", on {p['device']}" if "versions" in p else "")
    model = (f", model: {p['embedders'].split(' (')[0]} embedders, timestep shift "
             f"{p['timestep_shift']}, LayerNorm eps {p['norm_eps']:g}, "
             f"{p['model_parameters'] / 1e6:.4g}M parameters" if "embedders" in p else "")
    if "embedders_tied_within" in p:
        model = model.replace(" embedders,", f" embedders ({p['embedders_tied_within']}),", 1)
    rule = f" (FA counts: {p['forget_rule']})" if "forget_rule" in p else ""
    kid = f", KID {p['kid']}" if "kid" in p else ""
    fast = "FAST (for quick looks only; published comparisons need the full protocol), " \
        if p.get("protocol", "full") != "full" else ""
    return (f"{fast}{p['sampler']}, {p['steps']} steps{spacing}{batches}, guidance "
            f"{p['guidance']}{channels}{precision}{model}, "
            f"{p['forget_samples']} forget / "
            f"{p['retain_samples']} retain samples, FID reference {p['reference']}, features "
            f"{p['feature_extractor']}{kid}, classifier {p['classifier']}{rule}, seed {p['seed']}"
            f"{software}")


def method(row: dict) -> str:
    """A table row's method, with the setting it ran at where a tuning grid or a sweep gave one."""
    return row["method"] + (f" ({row['setting']})" if row.get("setting") else "")


def number(value: float | None, spec: str = ".3f") -> str:
    """A score as text (`spec`), or n/a for one not computed (a non-finite FID, no samples)."""
    return "n/a" if value is None else format(value, spec)


KID_SCALE = 1e3  # KID is printed x1e3, as papers print it


def _rows(m: dict, sides: tuple[str, ...]) -> list[tuple[str, str, str, float]]:
    """(title, score, format, scale) of the scores `m[side]` has, for one of `sides`.

    A score is printed times its scale (KID x1e3). An older run has no published-rule FA, only the
    digits classifier has a "not a digit" class; a FID that is not finite still shows, as n/a."""
    rows = [("forget accuracy (lower is better)", "forget_accuracy", "{:.3f}", 1),
            ("  by the published top-class rule", "forget_accuracy_published", "{:.3f}", 1),
            ("  called 'not a digit'", "forget_not_a_class", "{:.3f}", 1),
            ("forget-class probability", "forget_probability", "{:.3f}", 1),
            ("forget-class entropy (nats)", "forget_entropy", "{:.3f}", 1),
            ("retain accuracy", "retain_accuracy", "{:.3f}", 1),
            (f"FID ({m['protocol']['feature_extractor'].split(' ')[0]})", "fid", "{:.3f}", 1),
            ("KID x1e3 (same features)", "kid", "{:.3f}", KID_SCALE),
            ("precision (k-NN, k = 3)", "precision", "{:.3f}", 1),
            ("recall (k-NN, k = 3)", "recall", "{:.3f}", 1)]
    return [r for r in rows
            if r[1] == "fid" or any(m[side].get(r[1]) is not None for side in sides)]


def scores_text(m: dict) -> str:
    """The terminal report of one model scored without erasing (`erase-class --score-only`).

    Its scores, why FID is n/a where it is, and the robustness measurements the config asked for
    (`robustness_lines` of the one model)."""
    lines = [f"Scores of {m['model']} for class {m['forget_class']} ({m['class_name']}), seed "
             f"{m['seed']}:"]
    scores = m["scores"]
    for title, key, fmt, scale in _rows(m, ("scores",)):
        value = scores.get(key)
        lines.append(f"{title:36s}{'n/a' if value is None else fmt.format(value * scale):>10s}")
    if scores.get("fid_error"):
        lines.append(f"FID: {scores['fid_error']}")
    lines += robustness_lines(None, scores.get("robustness", {}))
    return "\n".join(lines + ["protocol: " + protocol_line(m["protocol"])])


def summary(m: dict) -> str:
    """The terminal summary of one erasure (or of several seeds), from its metrics.json `m`."""
    rows = _rows(m, ("before", "after"))
    t = m["timings"]
    std = m.get("std")
    seeds = f"seeds {', '.join(map(str, m['seeds']))} (mean +- std)" if std else f"seed {m['seed']}"

    def cell(side, key, fmt, scale):
        if m[side].get(key) is None:  # a non-finite FID: its reason is printed below the table
            return "n/a"
        if not std:
            return fmt.format(m[side][key] * scale)
        spread = std[side][key]  # None when only one trial had a finite value
        return (fmt.format(m[side][key] * scale) + " +- "
                + ("n/a" if spread is None else fmt.format(spread * scale)))

    # a huge number never runs into its neighbour
    width = max([20 if std else 10] + [len(cell(side, *row[1:])) + 2
                                       for side in ("before", "after") for row in rows])
    limit = m.get("outer_steps_limit", m["outer_steps"])
    stopped = (f" (of {limit}: the forget-accuracy probe stopped it)" if m["outer_steps"] < limit
               else "")
    lines = [f"Erased class {m['forget_class']} ({m['class_name']}) with {m['method']}, "
             f"{m['optimizer']} optimizer(s), "
             f"{seeds}: {m['outer_steps']} outer steps{stopped} in {t['erase_s']:.1f} s "
             f"({t['erase_steps_per_s']:.1f} steps/s)",
             f"{'':36s}{'before':>{width}s}{'after':>{width}s}"]
    lines += [f"{title:36s}{cell('before', *row):>{width}s}{cell('after', *row):>{width}s}"
              for title, *row in rows]
    lines += [f"FID {side}: {m[side]['fid_error']}" for side in ("before", "after")
              if m[side].get("fid_error")]
    lines += robustness_lines(m["before"].get("robustness", {}), m["after"].get("robustness", {}))
    lines.append("protocol: " + protocol_line(m["protocol"]))
    return "\n".join(lines)


def _steps(value) -> str:
    return "never" if value is None else str(value)


def robustness_lines(before: dict | None, after: dict) -> list[str]:
    """The robustness measurements (config section `robustness`), before -> after, a line each.

    With `before` None, those of one model (`erase-class --score-only`): its values alone."""

    def change(old, new, spec=".3f", text=number):
        return text(new, spec) if before is None else f"{text(old, spec)} -> {text(new, spec)}"

    was = before or {}
    lines = []
    for g, fa in after.get("forget_accuracy_at_guidance", {}).items():
        lines.append(f"forget accuracy at guidance {g}: "
                     f"{change(was.get('forget_accuracy_at_guidance', {}).get(g), fa)}")
    if "unconditional_forget_share" in after:
        lines.append("unconditional samples called the class: "
                     + change(was.get("unconditional_forget_share"),
                              after["unconditional_forget_share"]))
    if "neighbour_classes" in after:
        why = f" ({after['neighbour_fid_error']})" if after.get("neighbour_fid_error") else ""
        accuracy = change(was.get("neighbour_retain_accuracy"), after["neighbour_retain_accuracy"])
        lines.append(f"nearest classes {', '.join(map(str, after['neighbour_classes']))}: retain "
                     f"accuracy {accuracy}, "
                     f"FID {change(was.get('neighbour_fid'), after['neighbour_fid'], '.2f')}{why}")
    if "conditioning_attack" in after:
        a, b = was.get("conditioning_attack", {}), after["conditioning_attack"]
        lines.append(f"conditioning attack (a new class embedding from the {b['start']} row, "
                     f"{b['steps']} steps): forget accuracy "
                     f"{change(a.get('forget_accuracy'), b['forget_accuracy'])}")
    for k, attack in after.get("relearn", {}).items():
        old = was.get("relearn", {}).get(k, {})
        curve = " / ".join(change(old.get("forget_accuracy", {}).get(s), fa, ".2f")
                           for s, fa in attack["forget_accuracy"].items())
        relearned = change(old.get("steps_to_relearn", "n/a"), attack["steps_to_relearn"],
                           text=lambda value, _: _steps(value))
        lines.append(f"relearning on {attack['images']} images, forget accuracy at steps "
                     f"{', '.join(attack['forget_accuracy'])}: {curve}; steps to relearn "
                     f"{relearned}")
    return lines


VERDICT_COLORS = {"counted": (214, 39, 40), "another class": (150, 150, 150),
                  "not a digit": (31, 119, 180)}


def verdict_rows(rows: list[tuple[str, torch.Tensor, list[str]]], scale: int = 4) -> Image.Image:
    """What a forget-accuracy rule saw, as an image for a person to check.

    Each row is (label, uint8 (N, C, H, W) samples, their verdicts): the samples, upscaled by
    `scale`, each framed in the colour of its verdict (VERDICT_COLORS: counted as the class, another
    class, "not a digit"), the row's label on the left and a legend on top."""
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength
    frame, gap = 2, 2
    size = rows[0][1].shape[-1] * scale + 2 * frame
    label_w = 8 + math.ceil(max(measure(label) for label, _, _ in rows))
    width = label_w + max(len(images) for _, images, _ in rows) * (size + gap)
    head = 20
    canvas = Image.new("RGB", (width, head + len(rows) * (size + gap)), "white")
    draw = ImageDraw.Draw(canvas)
    x = 4
    for name, color in VERDICT_COLORS.items():
        draw.rectangle([x, 5, x + 10, 15], fill=color)
        draw.text((x + 14, 4), name, fill="black")
        x += 24 + math.ceil(measure(name))
    for r, (label, images, verdicts) in enumerate(rows):
        y = head + r * (size + gap)
        draw.text((4, y + size // 2 - 6), label, fill="black")
        for i, (image, verdict) in enumerate(zip(images, verdicts)):
            x = label_w + i * (size + gap)
            draw.rectangle([x, y, x + size - 1, y + size - 1], fill=VERDICT_COLORS[verdict])
            canvas.paste(_tile(image[None], scale), (x + frame, y + frame))
    return canvas
