"""The model card of an erased model (model/README.md, huggingface_hub's ModelCard); Hub pushes."""
from __future__ import annotations

import re
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from dualerase.errors import UsageError
from dualerase.reports.summary import number as _num
from dualerase.reports.summary import protocol_line

TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

{{ base }} with class {{ forget_class }} ({{ class_name }}) erased by {{ method }} with \
{{ optimizer }} optimizer(s)
(DualOptim: Zhong, Luo, Liu, 2025), seed {{ seed }}, {{ outer_steps }} outer steps.

| | before | after |
|---|---|---|
| forget accuracy (lower is better) | {{ fa_before }} | {{ fa_after }} |
| forget accuracy, published top-class rule | {{ fap_before }} | {{ fap_after }} |
{% if na_after != "n/a" %}| forget samples called "not a digit" | {{ na_before }} | {{ na_after }} |
{% endif %}| retain accuracy | {{ ra_before }} | {{ ra_after }} |
| FID ({{ features }}) | {{ fid_before }} | {{ fid_after }} |
| KID x1e3, precision, recall (same features) | {{ quality_before }} | {{ quality_after }} |

Protocol: {{ protocol }}.

## How to load

```python
{{ load }}
```

`match_training` (from `pip install dualerase`) runs the model with the settings it was trained \
with (embedders,
timestep frequencies, LayerNorm eps: `{{ record }}`); without them its samples are not the ones \
scored above. It
reads them from a local folder (for a Hub repository, `huggingface_hub.snapshot_download(repo)` \
gives one).
{{ note }}The run's whole config is [dualerase-config.yaml](dualerase-config.yaml) in this folder \
(`erase-class --config
dualerase-config.yaml` runs it again).
"""
# the run's config.yaml, copied into the model folder that the card describes
CARD_CONFIG = "dualerase-config.yaml"
LOAD = {"pipeline": ("from diffusers import DiTPipeline\n"
                     "from dualerase.models.pretrained import match_training\n\n"
                     'folder = "<this folder>"\n'
                     "pipe = match_training(DiTPipeline.from_pretrained(folder), folder)\n"
                     'images = pipe(pipe.get_label_ids(["{name}"]), '
                     "num_inference_steps=250{guidance}).images"),
        "transformer": ("from diffusers import DiTTransformer2DModel\n"
                        "from dualerase.models.pretrained import match_training\n\n"
                        'folder = "<this folder>"\n'
                        "model = match_training(DiTTransformer2DModel.from_pretrained(folder), "
                        "folder)")}
SAMPLER = ("`DiTPipeline` samples with the folder's fixed-variance scheduler; the scores above "
           "used the learned variance, as `sample-grid --model <this folder>` (dualerase) does. ")
NOTE = {"pipeline": SAMPLER,
        "classes": SAMPLER + "`DiTPipeline` guides with class 1000 as the null class, which this "
                             "{n}-class model lacks (its null class is {n}): sample it at "
                             "`guidance_scale=1`, or guided with `sample-grid --model <this "
                             "folder> --set sample.guidance=4`. ",
        "transformer": "Without a VAE it cannot be sampled by `DiTPipeline`: `sample-grid base "
                       "<this folder>` (dualerase, with the run's `--config`) draws it beside the "
                       "model it was erased from. "}


def _quality(scores: dict) -> str:
    kid = scores.get("kid")
    return ", ".join([_num(None if kid is None else kid * 1e3, ".2f"),
                      *(_num(scores.get(k), ".3f") for k in ("precision", "recall"))])


def _names_only(text: str) -> str:
    """`text` with each absolute or home path (/a/b/ref, ~/ref) cut to its last part (ref)."""
    return re.sub(r"(?<![\w.])[~/][^\s,;()`]*", lambda m: Path(m.group()).name or m.group(),
                  text)


def model_card(metrics: dict, pipeline: bool, num_classes: int) -> ModelCard:
    """The card of the erased model that `metrics` (metrics.json) describes.

    Args:
        metrics: the run's metrics.json.
        pipeline: the model folder is a DiTPipeline folder; False: a bare transformer folder.
        num_classes: the model's class count (DiTPipeline's guidance assumes 1000)."""
    base = metrics["model"].split("#")[0]
    # a Hub id as base model; not the embedded digits model (digits/<folder>) or a local folder
    hub_id = (base if "/" in base and not base.startswith(("/", ".", "~", "digits/"))
              and not Path(base).exists() else None)
    local = not hub_id and not base.startswith("digits/")
    # a local folder by its name alone: a pushed card does not publish the user's directories
    shown = Path(base).expanduser().resolve().name if local else base
    before, after = metrics["before"], metrics["after"]
    data = ModelCardData(library_name="diffusers", base_model=hub_id,
                         tags=["diffusion", "dit", "machine-unlearning", "class-erasure",
                               "dualoptim", metrics["method"]])
    if pipeline:
        load = LOAD["pipeline"].format(
            name=metrics["class_name"] if num_classes == 1000 else "<a class name>",
            guidance="" if num_classes == 1000 else ", guidance_scale=1.0")
        note = NOTE["pipeline" if num_classes == 1000 else "classes"].format(n=num_classes)
    else:
        load, note = LOAD["transformer"], NOTE["transformer"]
    return ModelCard.from_template(
        data, template_str=TEMPLATE, title=f"{metrics['class_name']} erased from {shown}",
        base=f"`{shown}`" + (" (a local folder)" if local else ""),
        forget_class=metrics["forget_class"], class_name=metrics["class_name"],
        method=metrics["method"],
        optimizer=metrics["optimizer"], seed=metrics["seed"], outer_steps=metrics["outer_steps"],
        fa_before=_num(before["forget_accuracy"]), fa_after=_num(after["forget_accuracy"]),
        fap_before=_num(before.get("forget_accuracy_published")),
        fap_after=_num(after.get("forget_accuracy_published")),
        na_before=_num(before.get("forget_not_a_class")),
        na_after=_num(after.get("forget_not_a_class")),
        ra_before=_num(before["retain_accuracy"]), ra_after=_num(after["retain_accuracy"]),
        fid_before=_num(before["fid"], ".2f"), fid_after=_num(after["fid"], ".2f"),
        quality_before=_quality(before), quality_after=_quality(after),
        features=metrics["protocol"]["feature_extractor"].split(" ")[0],
        protocol=_names_only(protocol_line(metrics["protocol"])),
        load=load, note=note, record="transformer/dualerase.json" if pipeline else "dualerase.json")


def check_hub(repo: str) -> None:
    """Refuse --push-to-hub (UsageError) before any work unless the Hub answers a logged-in user."""
    from huggingface_hub import HfApi

    try:
        HfApi().whoami()
    # offline, no token, an expired one: one line saying which and what to do
    except Exception as e:
        raise UsageError(f"--push-to-hub {repo}: the Hugging Face Hub does not answer as a "
                         f"logged-in user ({type(e).__name__}): log in with `hf auth login` and "
                         "check the network, or run without --push-to-hub and upload later with "
                         f"`hf upload {repo} <output>/model`") from None


def push_to_hub(folder: Path, repo: str) -> str:
    """Upload the model folder (card included) to the Hub repository `repo`, made if needed.

    Its config copy goes up with each absolute or home path cut to its last part (the folder's
    names, not this machine's layout). Returns the upload's URL; a failed upload raises UsageError
    (the run is saved)."""
    from huggingface_hub import HfApi

    api = HfApi()
    config = folder / CARD_CONFIG
    try:
        api.create_repo(repo, exist_ok=True)
        url = str(api.upload_folder(repo_id=repo, folder_path=str(folder),
                                    ignore_patterns=[CARD_CONFIG],
                                    commit_message="Upload an erased model (dualerase)"))
        if config.is_file():
            api.upload_file(path_or_fileobj=_names_only(config.read_text()).encode(),
                            path_in_repo=CARD_CONFIG, repo_id=repo,
                            commit_message="Upload the run's config (dualerase)")
        return url
    except Exception as e:  # offline, no token, no rights: one line saying which and what to do
        raise UsageError(f"could not push {folder} to the Hub repository {repo} "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:200]}): the run is saved; "
                         f"once `hf auth login` and the network work, retry with "
                         f"`hf upload {repo} {folder}`") from None
