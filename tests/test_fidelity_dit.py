"""The model the paper erased and the sampler DiT samples with: a small original-style DiT, written
from DiT's published description, converted into diffusers' layout, must give the same outputs,
erase to the same weights and sample the same images as DiT's own respaced sampler."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import changed
from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel
from tiny_imagenet import ROBUSTNESS, build_classifier, build_data, build_inception, build_pipeline
from torch import nn

from dualerase.cli import erase_class, fid_reference
from dualerase.config import load_config
from dualerase.data.streams import seeded_generator
from dualerase.errors import ConfigError, ModelError
from dualerase.models.dit import (
    build_dit,
    describe_model,
    embedder_copies_equal,
    embedders_tied,
    make_scheduler,
    sampler_scheduler,
    set_norm_eps,
    set_timestep_shift,
)
from dualerase.models.pretrained import load_model, match_training, save_pipeline
from dualerase.runs.checkpoint import load_checkpoint, save_checkpoint
from dualerase.sampling import sample
from dualerase.unlearn.dualoptim import EraseConfig, unlearn

SIZE, PATCH, CHANNELS, HIDDEN, HEADS, DEPTH, CLASSES = 8, 2, 4, 16, 2, 2, 1000


# --- The original DiT, transcribed from its description (Peebles & Xie, 2023), not from code ---

def timestep_embedding(t: torch.Tensor, dim: int = 256) -> torch.Tensor:
    """cat[cos(t f), sin(t f)] with f_i = exp(-ln(10000) i / half), i = 0..half-1."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def sincos_2d(dim: int, grid: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine positional embedding: half the channels encode the row, half the
    column."""
    def one_axis(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.outer(pos, omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    cols, rows = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64))
    return torch.from_numpy(np.concatenate([one_axis(dim // 2, cols.reshape(-1)),
                                            one_axis(dim // 2, rows.reshape(-1))], axis=1)).float()


def modulate(x, shift, scale):
    return x * (1 + scale[:, None]) + shift[:, None]


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        n, tokens, dim = x.shape
        q, k, v = self.qkv(x).reshape(n, tokens, 3, self.heads,
                                      dim // self.heads).permute(2, 0, 3, 1, 4)
        weights = (q @ k.transpose(-2, -1) * (dim // self.heads) ** -0.5).softmax(dim=-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(n, tokens, dim))


class Mlp(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class Block(nn.Module):
    """adaLN-Zero block: shift/scale/gate for attention and MLP from the conditioning; LayerNorms
    1e-6, no affine."""

    def __init__(self, dim, heads):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x, c):
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = \
            self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa[:, None] * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        return x + gate_mlp[:, None] * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class OriginalDiT(nn.Module):
    """ONE timestep embedder and ONE label embedder (num_classes + 1 rows, the last the null class),
    shared by all blocks and the final layer; learned sigma (2x channels out)."""

    def __init__(self):
        super().__init__()
        self.x_embedder = nn.Module()
        self.x_embedder.proj = nn.Conv2d(CHANNELS, HIDDEN, PATCH, stride=PATCH)
        self.register_buffer("pos_embed", sincos_2d(HIDDEN, SIZE // PATCH)[None])
        self.t_embedder = nn.Module()
        self.t_embedder.mlp = nn.Sequential(nn.Linear(256, HIDDEN), nn.SiLU(),
                                            nn.Linear(HIDDEN, HIDDEN))
        self.y_embedder = nn.Module()
        self.y_embedder.embedding_table = nn.Embedding(CLASSES + 1, HIDDEN)
        self.blocks = nn.ModuleList(Block(HIDDEN, HEADS) for _ in range(DEPTH))
        self.final_layer = nn.Module()
        self.final_layer.norm_final = nn.LayerNorm(HIDDEN, elementwise_affine=False, eps=1e-6)
        self.final_layer.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(HIDDEN, 2 * HIDDEN))
        self.final_layer.linear = nn.Linear(HIDDEN, PATCH * PATCH * 2 * CHANNELS)

    def forward(self, x, t, y):
        x = self.x_embedder.proj(x).flatten(2).transpose(1, 2) + self.pos_embed
        c = self.t_embedder.mlp(timestep_embedding(t).to(x.dtype)) + \
            self.y_embedder.embedding_table(y)
        for block in self.blocks:
            x = block(x, c)
        shift, scale = self.final_layer.adaLN_modulation(c).chunk(2, dim=1)
        x = self.final_layer.linear(modulate(self.final_layer.norm_final(x), shift, scale))
        grid, out = SIZE // PATCH, 2 * CHANNELS  # unpatchify
        x = x.reshape(-1, grid, grid, PATCH, PATCH, out)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(-1, out, SIZE, SIZE)


def original_dit(seed: int = 0) -> OriginalDiT:
    """Random weights everywhere (not adaLN-Zero's zero init), so that every weight matters and gets
    gradients; the output layer scaled down so that epsilon and the variance interpolation stay in a
    trained model's range."""
    torch.manual_seed(seed)
    model = OriginalDiT()
    with torch.no_grad():
        model.final_layer.linear.weight.mul_(0.1)
        model.final_layer.linear.bias.mul_(0.1)
    return model


def to_diffusers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An original state dict (or any per-weight dict, e.g. a mask) in diffusers' layout: the one
    embedder copied into every block, qkv split into to_q/to_k/to_v."""
    out = {f"pos_embed.proj.{kind}": state[f"x_embedder.proj.{kind}"]
           for kind in ("weight", "bias")}
    for kind in ("weight", "bias"):
        out[f"proj_out_1.{kind}"] = state[f"final_layer.adaLN_modulation.1.{kind}"]
        out[f"proj_out_2.{kind}"] = state[f"final_layer.linear.{kind}"]
    for i in range(DEPTH):
        b, o = f"transformer_blocks.{i}.", f"blocks.{i}."
        out[b + "norm1.emb.class_embedder.embedding_table.weight"] = \
            state["y_embedder.embedding_table.weight"]
        for kind in ("weight", "bias"):
            out[b + f"norm1.emb.timestep_embedder.linear_1.{kind}"] = \
                state[f"t_embedder.mlp.0.{kind}"]
            out[b + f"norm1.emb.timestep_embedder.linear_2.{kind}"] = \
                state[f"t_embedder.mlp.2.{kind}"]
            out[b + f"norm1.linear.{kind}"] = state[o + f"adaLN_modulation.1.{kind}"]
            for name, part in zip(("to_q", "to_k", "to_v"), state[o + f"attn.qkv.{kind}"].chunk(3)):
                out[b + f"attn1.{name}.{kind}"] = part
            out[b + f"attn1.to_out.0.{kind}"] = state[o + f"attn.proj.{kind}"]
            out[b + f"ff.net.0.proj.{kind}"] = state[o + f"mlp.fc1.{kind}"]
            out[b + f"ff.net.2.{kind}"] = state[o + f"mlp.fc2.{kind}"]
    return {k: v.clone() for k, v in out.items()}


def converted(original: OriginalDiT) -> DiTTransformer2DModel:
    """The original's weights in a fresh diffusers DiT, as diffusers' conversion leaves them (its
    own defaults: shift 1, norm_eps 1e-5, a separate embedder per block)."""
    model = DiTTransformer2DModel(num_attention_heads=HEADS, attention_head_dim=HIDDEN // HEADS,
                                  in_channels=CHANNELS, out_channels=2 * CHANNELS, num_layers=DEPTH,
                                  sample_size=SIZE, patch_size=PATCH, num_embeds_ada_norm=CLASSES)
    model.load_state_dict(to_diffusers(original.state_dict()))
    return model.eval()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A converted original-style DiT as a DiTPipeline folder (tiny VAE), with equal embedder
    copies."""
    return build_pipeline(tmp_path_factory.mktemp("fidelity") / "dit", converted(original_dit()))


INPUTS = (torch.randn(3, CHANNELS, SIZE, SIZE, generator=torch.Generator().manual_seed(1)),
          torch.tensor([0, 500, 999]), torch.tensor([3, 207, CLASSES]))


def test_the_positional_embedding_is_the_originals():
    assert torch.allclose(converted(original_dit()).pos_embed.pos_embed,
                          sincos_2d(HIDDEN, SIZE // PATCH)[None], atol=1e-6)


def test_a_converted_checkpoint_runs_as_the_original(folder):
    original = original_dit().eval()
    ours = load_model(folder)  # auto: copies equal at load -> tied, shift 0, eps 1e-6
    assert embedders_tied(ours)
    assert describe_model(ours)["timestep_shift"] == 0
    assert ours.config.norm_eps == 1e-6
    # diffusers' defaults
    plain = DiTTransformer2DModel.from_pretrained(folder / "transformer").eval()
    with torch.no_grad():
        want = original(*INPUTS)
        shift_only = set_timestep_shift(
            DiTTransformer2DModel.from_pretrained(folder / "transformer"), 0).eval()
        eps_only = set_norm_eps(
            DiTTransformer2DModel.from_pretrained(folder / "transformer"), 1e-6).eval()
        diff = {name: ((m(*INPUTS[:2], class_labels=INPUTS[2]).sample - want).abs().max()
                       / want.abs().max()).item()
                for name, m in [("ours", ours), ("diffusers' defaults", plain),
                                ("shift fixed only", shift_only), ("eps fixed only", eps_only)]}
    print("\nforward max |diff| vs the original, relative to max |output|: "
          + ", ".join(f"{k} {v:.2e}" for k, v in diff.items()))
    assert diff["ours"] < 1e-5
    assert diff["diffusers' defaults"] > 1e-2  # the frequencies: a large gap
    assert diff["eps fixed only"] > 1e-2
    # the eps: a small one, still far above float rounding
    assert diff["shift fixed only"] > 10 * diff["ours"]


def test_timestep_frequencies_with_shift_0_are_the_originals(folder):
    proj = load_model(folder).transformer_blocks[0].norm1.emb.time_proj
    t = torch.tensor([0, 1, 100, 500, 999])
    assert torch.allclose(proj(t), timestep_embedding(t), atol=1e-6, rtol=1e-6)
    proj.downscale_freq_shift = 1  # diffusers' own
    shifted, original = proj(t), timestep_embedding(t)
    cosine = F.cosine_similarity(shifted, original, dim=1)
    assert torch.equal(shifted[0], original[0])  # the same at t = 0
    assert cosine[-1] < 0.6  # far apart at t = 999


def test_a_model_trained_in_diffusers_layout_keeps_its_settings(tiny_dit):
    assert not embedder_copies_equal(tiny_dit)
    match_training(tiny_dit)
    assert describe_model(tiny_dit) == {
        "embedders": "per block (as trained)", "timestep_shift": 1, "norm_eps": 1e-5,
        "model_parameters": sum(p.numel() for p in tiny_dit.parameters())}
    with pytest.raises(ModelError, match="embedders differ") as e:
        match_training(tiny_dit, tie=True)
    assert "\n" not in str(e.value)


def test_one_block_has_no_copies_to_tell_by():
    model = match_training(build_dit(num_classes=5, sample_size=4, in_channels=1, patch_size=2,
                                     layers=1, heads=2, head_dim=8))
    assert describe_model(model)["embedders"] == "per block (as trained)"
    assert describe_model(model)["timestep_shift"] == 1
    assert model.config.norm_eps == 1e-5


@pytest.mark.parametrize("item, message", [
    ("model.tie_embedders=maybe", "must be auto, true or false"),
    ("model.timestep_shift=2", "must be null, 0 .original DiT. or 1"),
    ("model.norm_eps=0", "must be > 0"),
    ("sample.timestep_spacing=linear", "valid: dit, leading, linspace, trailing"),
    ("sample.guidance_channels=0", "must be > 0"),
])
def test_bad_settings_are_one_line_errors(item, message):
    with pytest.raises(ConfigError, match=message) as e:
        load_config("imagenet", [item])
    assert "\n" not in str(e.value)


def test_guidance_channels_beyond_the_models_are_refused(tmp_path, capsys):
    code = erase_class.main(["3", "--output", str(tmp_path / "o"), "--set",
                             "sample.guidance_channels=3", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert "sample.guidance_channels 3 exceeds the model's 1 epsilon channels" in err
    assert err.count("\n") == 1


def test_tying_counts_one_embedder_as_the_original_does(folder):
    tied, untied = load_model(folder), load_model(folder, tie=False)
    original = sum(p.numel() for p in original_dit().parameters())
    assert describe_model(tied)["model_parameters"] == original  # pos_embed is a buffer in both
    per_block = sum(p.numel() for p in untied.transformer_blocks[0].norm1.emb.parameters())
    assert describe_model(untied)["model_parameters"] == original + (DEPTH - 1) * per_block


SCHEDULER = make_scheduler()


def eps_loss(forward, batch, scheduler=SCHEDULER):
    """Epsilon MSE at a batch's own timesteps and noise (both given, so every model sees the
    same)."""
    x0, y, t, noise = batch
    ac = scheduler.alphas_cumprod.double()[t].view(-1, 1, 1, 1).to(x0.dtype)
    out = forward(ac.sqrt() * x0 + (1 - ac).sqrt() * noise, t, y)
    return ((out[:, :CHANNELS] - noise) ** 2).mean()


class GradientAscent:
    """Forget: minus the epsilon MSE; retain: the epsilon MSE (the loop below hand-writes the same
    for the original)."""

    alpha_weights = "forget"

    def forget_loss(self, model, batch):
        return -eps_loss(lambda x, t, y: model(x, t, class_labels=y).sample, batch)

    def retain_loss(self, model, batch):
        return eps_loss(lambda x, t, y: model(x, t, class_labels=y).sample, batch)


def test_erasing_the_tied_model_is_erasing_the_original(folder):
    steps, lr = 4, 1e-3
    gen = torch.Generator().manual_seed(2)

    def batch(label):
        return (torch.randn(2, CHANNELS, SIZE, SIZE, generator=gen, dtype=torch.float64),
                torch.tensor([label, label]), torch.randint(0, 1000, (2,), generator=gen),
                torch.randn(2, CHANNELS, SIZE, SIZE, generator=gen, dtype=torch.float64))

    forget, retain = [batch(207) for _ in range(steps)], [batch(3) for _ in range(steps)]
    original = original_dit().double()
    params = [p for p in original.parameters()]
    masks = {n: torch.rand(p.shape, generator=gen) < 0.5 for n, p in original.named_parameters()}

    # The original, by hand: Algorithm 1 with two AdamW, masked and clipped forget steps, cosine
    # alpha.
    opt_f = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    opt_r = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    for step in range(steps):
        alpha = (1 + math.cos(math.pi * step / steps)) / 2
        opt_f.zero_grad()
        (-alpha * eps_loss(original, forget[step])).backward()
        for name, p in original.named_parameters():
            p.grad.mul_(masks[name])
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt_f.step()
        opt_r.zero_grad()
        eps_loss(original, retain[step]).backward()
        opt_r.step()

    cfg = EraseConfig(outer_steps=steps, forget_lr=lr, retain_lr=lr)
    results = {}
    for tie in ("auto", False):
        model = load_model(folder, tie=tie).double()
        mask = {k: v.bool() for k, v in to_diffusers(masks).items()}
        unlearn(model, GradientAscent(), iter(forget), iter(retain), cfg, mask=mask, progress=False)
        want = to_diffusers(original.state_dict())
        results[tie] = max((v - want[k]).abs().max().item() for k, v in model.state_dict().items())
    print(f"\nerased weights max |diff| vs the original: tied {results['auto']:.2e}, per block "
          f"{results[False]:.2e}")
    assert results["auto"] < 1e-10
    # erasing 28 (here 2) copies on their own is another optimisation problem
    assert results[False] > 1e-4


def test_a_tied_model_checkpoints_and_loads_back(folder, tmp_path):
    model = load_model(folder)
    with torch.no_grad():
        model.transformer_blocks[0].norm1.emb.class_embedder.embedding_table.weight[5] += 1.0
    opts = tuple(torch.optim.AdamW(model.parameters()) for _ in range(2))
    # safetensors refuses shared memory: repeats are cloned
    path = save_checkpoint(tmp_path, 3, model, opts)
    fresh = load_model(folder)
    assert load_checkpoint(path, fresh,
                           tuple(torch.optim.AdamW(fresh.parameters()) for _ in range(2))) == 3
    assert embedders_tied(fresh)
    assert not changed(fresh, model)


def test_an_exported_model_records_its_settings(folder, tmp_path):
    """Copies that differ after a per-block erasure would be guessed as diffusers-trained: the
    record says otherwise."""
    pipe = DiTPipeline.from_pretrained(folder)
    model = load_model(folder, tie=False)
    with torch.no_grad():
        model.transformer_blocks[1].norm1.emb.class_embedder.embedding_table.weight[5] += 1.0
    save_pipeline(tmp_path / "m", model, pipe.vae, pipe.scheduler.config,
                  {i: str(i) for i in range(CLASSES)})
    back = load_model(tmp_path / "m")
    assert not embedders_tied(back)
    assert describe_model(back)["timestep_shift"] == 0
    assert back.config.norm_eps == 1e-6
    tied = load_model(folder)
    save_pipeline(tmp_path / "t", tied, pipe.vae, pipe.scheduler.config,
                  {i: str(i) for i in range(CLASSES)})
    assert embedders_tied(tied)  # the tie survives saving
    assert embedder_copies_equal(DiTPipeline.from_pretrained(tmp_path / "t").transformer)


def test_erase_class_on_a_converted_pipeline_erases_one_embedder(folder, tmp_path):
    data = build_data(tmp_path / "train")
    reference = tmp_path / "reference"
    assert fid_reference.main(["--data", str(data), "--output", str(reference), "--exclude", "207",
                               "--quiet"]) == 0
    sets = [f"eval.fa_weights={build_classifier(tmp_path / 'clf.safetensors')}",
            "eval.fa_classifier=test_resnet", "eval.fa_size=32", f"eval.fid_reference={reference}",
            "eval.forget_samples=4", "eval.retain_samples=4",
            f"eval.fid_weights={build_inception(tmp_path / 'inception.pth')}",
            "eval.grid_per_class=1", "eval.grid_classes=2", "sample.steps=3", "sample.batch_size=4",
            "erase.outer_steps=4", "erase.batch_size=2", "erase.checkpoint_every=2",
            "method.grad_samples=4", "data.retain_images=10",
            *(f"{k}={v}" for k, v in ROBUSTNESS.items())]
    out = tmp_path / "run"
    assert erase_class.main(["207", "--model", str(folder), "--data", str(data), "--output",
                             str(out), "--quiet", *[x for s in sets for x in ("--set", s)]]) == 0
    protocol = json.loads((out / "metrics.json").read_text())["protocol"]
    assert protocol["embedders"] == "tied (one shared, as the original DiT)"
    assert protocol["timestep_shift"] == 0
    assert protocol["norm_eps"] == 1e-6
    assert protocol["guidance_channels"] == 3
    assert protocol["timestep_spacing"] == "dit"
    assert protocol["model_parameters"] == sum(p.numel() for p in original_dit().parameters())
    pipe = DiTPipeline.from_pretrained(out / "model")
    assert embedder_copies_equal(pipe.transformer)
    assert pipe.transformer.config.norm_eps == 1e-6
    base = DiTPipeline.from_pretrained(folder).transformer
    table = "norm1.emb.class_embedder.embedding_table.weight"
    # erasure moved the one embedder
    assert not torch.equal(pipe.transformer.get_parameter(f"transformer_blocks.0.{table}"),
                           base.get_parameter(f"transformer_blocks.0.{table}"))
    assert json.loads(
        (out / "model" / "transformer" / "dualerase.json").read_text())["timestep_shift"] == 0
    match_training(pipe, out / "model")
    assert embedders_tied(pipe.transformer)
    assert describe_model(pipe.transformer)["timestep_shift"] == 0


# --- DiT's sampler ---

def dit_sample(model, labels, *, steps, guidance, channels_guided, gen):
    """DiT's respaced p_sample loop with classifier-free guidance, written from its description:
    betas re-derived from alphas_cumprod at the kept steps (computed in float64, read as float32),
    mean from the predicted x0, learned-range variance between the clipped posterior variance and
    beta, no noise at the last step, guidance on the first `channels_guided` epsilon channels. The
    initial noise and each step's noise come from `gen`, in the order our sampler draws them."""
    kept = dits_steps(steps)
    ac_all = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000, dtype=np.float64))
    betas = 1 - ac_all[kept] / np.append(1.0, ac_all[kept][:-1])
    alphas = 1 - betas
    ac = np.cumprod(alphas)
    ac_prev = np.append(1.0, ac[:-1])
    post_var = betas * (1 - ac_prev) / (1 - ac)
    tables = {"log_var_min": np.log(np.append(post_var[1], post_var[1:])),
              "log_beta": np.log(betas), "recip": np.sqrt(1 / ac), "recipm1": np.sqrt(1 / ac - 1),
              "coef_x0": betas * np.sqrt(ac_prev) / (1 - ac),
              "coef_xt": (1 - ac_prev) * np.sqrt(alphas) / (1 - ac)}
    at = {k: torch.from_numpy(v).float() for k, v in tables.items()}
    n = len(labels)
    x = torch.randn((n, CHANNELS, SIZE, SIZE), generator=gen)
    y = torch.cat([labels, torch.full_like(labels, CLASSES)])
    for i in reversed(range(steps)):
        with torch.no_grad():
            out = model(torch.cat([x, x]), torch.full((2 * n,), kept[i]), y)
        cond, uncond = out.chunk(2)
        k = channels_guided
        out = torch.cat([uncond[:, :k] + guidance * (cond[:, :k] - uncond[:, :k]), cond[:, k:]],
                        dim=1)
        eps, v = out[:, :CHANNELS], out[:, CHANNELS:]
        frac = (v + 1) / 2
        log_var = frac * at["log_beta"][i] + (1 - frac) * at["log_var_min"][i]
        x0 = at["recip"][i] * x - at["recipm1"][i] * eps
        mean = at["coef_x0"][i] * x0 + at["coef_xt"][i] * x
        x = mean + torch.exp(0.5 * log_var) * torch.randn(x.shape, generator=gen) if i > 0 else mean
    return x


def dits_steps(n: int) -> list[int]:
    """DiT's space_timesteps(1000, "n"), written from its description: start at index 0, add the
    fractional stride 999 / (n - 1) n times, keep round() of each running sum (Python's round: half
    to even)."""
    out, position = [], 0.0
    for _ in range(n):
        out.append(round(position))
        position += 999 / (n - 1)
    return out


@pytest.mark.parametrize("steps", [250, 100, 21, 43, 61, 2])
def test_the_steps_are_dits_respaced_steps(steps):
    """At 21 steps DiT keeps 499 where diffusers' linspace keeps 500; at 43, 833 against 832; at 61,
    167 against 166."""
    for kind in ("ddpm", "dpm-solver++"):
        scheduler = sampler_scheduler(kind)
        scheduler.set_timesteps(steps)
        assert scheduler.timesteps.tolist() == dits_steps(steps)[::-1]
    assert (499 in dits_steps(21)) and (833 in dits_steps(43)) and (167 in dits_steps(61))



def test_other_spacings_are_diffusers():
    leading = make_scheduler(timestep_spacing="leading")
    leading.set_timesteps(250)
    assert leading.timesteps[0] == 996  # diffusers' default
    linspace = make_scheduler(timestep_spacing="linspace")
    linspace.set_timesteps(21)
    assert 500 in linspace.timesteps.tolist()


def test_our_sampler_is_dits_sampler(folder):
    """A random model predicts epsilon near 0, so x grows by 1 / sqrt(alphas_cumprod): compare
    relative to max |x|."""
    labels, seed, steps = torch.tensor([207, 3, 88]), 4, 100
    model = load_model(folder)
    ours = sample(model, make_scheduler(), labels, num_steps=steps, guidance=4.0, seed=seed,
                  guidance_channels=3, progress=False)
    theirs = dit_sample(original_dit().eval(), labels, steps=steps, guidance=4.0, channels_guided=3,
                        gen=seeded_generator(seed, 0))
    diff = ((ours - theirs).abs().max() / theirs.abs().max()).item()
    print(f"\nsampler max |diff| vs DiT's loop ({steps} steps), relative to max |x| "
          f"({theirs.abs().max():.1f}): {diff:.2e}")
    # Not bit for bit: diffusers' DDPMScheduler.step works in float32 (e.g. beta = 1 -
    # ac_t / ac_prev, a cancellation), DiT's tables are float64 read as float32. The same step
    # written in float64 lands within 9e-7 of DiT's loop.
    assert diff < 3e-5
    short = dict(num_steps=5, guidance=4.0, seed=seed, progress=False)
    # the 4th channel counts
    assert not torch.allclose(sample(model, make_scheduler(), labels, guidance_channels=3, **short),
                              sample(model, make_scheduler(), labels, **short), atol=1e-3)


def test_our_sampler_matches_ditpipeline_after_the_switch(folder):
    """DiTPipeline samples with a fixed variance and guides every channel; a deterministic scheduler
    (DDIM) avoids step noise, which DiTPipeline draws from the global generator."""
    labels, seed, steps, guidance = [207, 3], 5, 10, 4.0
    pipe = DiTPipeline.from_pretrained(folder)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    vae, config = pipe.vae, pipe.scheduler.config
    kwargs = dict(num_steps=steps, guidance=guidance, seed=seed, progress=False)
    ours = sample(load_model(folder), DDIMScheduler.from_config(config), torch.tensor(labels),
                  vae=vae, **kwargs)
    ours = (ours / 2 + 0.5).clamp(0, 1)  # DiTPipeline's output range
    latents = sample(load_model(folder), DDIMScheduler.from_config(config), torch.tensor(labels),
                     **kwargs)
    with torch.no_grad():  # decoded as DiTPipeline decodes: times 1 / scaling_factor
        ours_decoded_their_way = (
            vae.decode(1 / vae.config.scaling_factor * latents).sample / 2 + 0.5).clamp(0, 1)

    def pipeline_images():
        return pipe(labels, generator=seeded_generator(seed, 0), guidance_scale=guidance,
                    num_inference_steps=steps, output_type="pt").images

    before = (pipeline_images() - ours).abs().max().item()
    match_training(pipe, folder)
    images = pipeline_images()
    after = (images - ours).abs().max().item()
    print("\nDiTPipeline vs our sampler, max |diff| in [0, 1] images: without the switch "
          f"{before:.2e}, with it {after:.2e}")
    # Not bit for bit end to end: DiTPipeline multiplies the latents by 1 / scaling_factor, we (as
    # DiT's sample.py) divide by it. Our latents decoded DiTPipeline's way are its images exactly.
    assert torch.equal(images, ours_decoded_their_way)
    assert after < 1e-5
    assert before > 1e-2
