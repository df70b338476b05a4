"""The model card of an erased model (model/README.md, huggingface_hub's ModelCard), and pushing it to the Hub."""
from __future__ import annotations

from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from dualerase.errors import UsageError
from dualerase.reports.summary import protocol_line

TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

{{ base }} with class {{ forget_class }} ({{ class_name }}) erased by {{ method }} with {{ optimizer }} optimizer(s)
(DualOptim: Zhong, Luo, Liu, 2025), seed {{ seed }}, {{ outer_steps }} outer steps.

| | before | after |
|---|---|---|
| forget accuracy (lower is better) | {{ fa_before }} | {{ fa_after }} |
| retain accuracy | {{ ra_before }} | {{ ra_after }} |
| FID ({{ features }}) | {{ fid_before }} | {{ fid_after }} |

Protocol: {{ protocol }}.

## How to load

```python
{{ load }}
```

The settings it must run with (embedders, timestep frequencies, LayerNorm eps) are in `{{ record }}`; the run's whole
config is `config.yaml` next to this folder.
"""


def _num(value, spec=".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def model_card(metrics: dict, pipeline: bool) -> ModelCard:
    """The card of the erased model that `metrics` (metrics.json) describes; `pipeline`: a DiTPipeline folder (else a
    bare transformer folder)."""
    base = metrics["model"].split("#")[0]
    # a Hub id as base model; not the embedded digits model (digits/<folder>) or a local folder
    hub_id = base if "/" in base and not base.startswith(("/", ".", "digits/")) and not Path(base).exists() else None
    before, after = metrics["before"], metrics["after"]
    data = ModelCardData(library_name="diffusers", base_model=hub_id,
                         tags=["diffusion", "dit", "machine-unlearning", "class-erasure", "dualoptim",
                               metrics["method"]])
    cls = "DiTPipeline" if pipeline else "DiTTransformer2DModel"
    load = f'from diffusers import {cls}\nmodel = {cls}.from_pretrained("<this folder or repo>")'
    return ModelCard.from_template(
        data, template_str=TEMPLATE, title=f"{metrics['class_name']} erased from {base}", base=f"`{base}`",
        forget_class=metrics["forget_class"], class_name=metrics["class_name"], method=metrics["method"],
        optimizer=metrics["optimizer"], seed=metrics["seed"], outer_steps=metrics["outer_steps"],
        fa_before=_num(before["forget_accuracy"]), fa_after=_num(after["forget_accuracy"]),
        ra_before=_num(before["retain_accuracy"]), ra_after=_num(after["retain_accuracy"]),
        fid_before=_num(before["fid"], ".2f"), fid_after=_num(after["fid"], ".2f"),
        features=metrics["protocol"]["feature_extractor"].split(" ")[0], protocol=protocol_line(metrics["protocol"]),
        load=load, record="transformer/dualerase.json" if pipeline else "dualerase.json")


def push_to_hub(folder: Path, repo: str) -> str:
    """Upload the model folder (card included) to the Hub repository `repo`, created if needed; its URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo, exist_ok=True)
        return str(api.upload_folder(repo_id=repo, folder_path=str(folder),
                                     commit_message="Upload an erased model (dualerase)"))
    except Exception as e:  # offline, no token, no rights: one line saying which and what to do
        raise UsageError(f"could not push {folder} to the Hub repository {repo} ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:200]}): log in with `hf auth login` and check the network; the "
                         "run itself is saved") from None
