"""DiT's loss, label dropout, the sampler and saving."""
import pytest
import torch
from conftest import changed
from diffusers import DDIMScheduler

from dualerase.models.dit import drop_labels, load_dit, make_scheduler, num_classes
from dualerase.models.loss import DiTLoss
from dualerase.sampling import class_labels, sample


def test_builtin_label_dropout_is_off(tiny_dit):
    tiny_dit.train()
    x = torch.randn(64, 1, 4, 4)
    t = torch.full((64,), 10)
    y = torch.full((64,), 2)
    a = tiny_dit(x, t, class_labels=y).sample
    b = tiny_dit(x, t, class_labels=y).sample
    assert torch.equal(a, b)  # diffusers would drop labels at random in train mode


def test_drop_labels_rate_and_null_class():
    labels = torch.zeros(10000, dtype=torch.long)
    dropped = drop_labels(labels, 0.1, 7, torch.Generator().manual_seed(0))
    assert set(dropped.unique().tolist()) == {0, 7}
    assert 0.08 < (dropped == 7).float().mean().item() < 0.12
    assert torch.equal(drop_labels(labels, 0.0, 7), labels)


def test_vb_is_zero_for_the_true_posterior():
    loss = DiTLoss(make_scheduler())
    x0 = torch.rand(3, 1, 4, 4) * 2 - 1
    noise = torch.randn_like(x0)
    t = torch.tensor([5, 100, 900])
    xt = loss._at(loss.sqrt_ac, t, x0) * x0 + loss._at(loss.sqrt_1m_ac, t, x0) * noise
    v = -torch.ones_like(x0)  # frac 0: the model's variance is the posterior variance
    assert torch.allclose(loss._vb(noise, v, x0, xt, t), torch.zeros(3), atol=1e-4)
    # wrong variance at small t costs bits
    assert loss._vb(noise, torch.ones_like(x0), x0, xt, t)[0] > 0.01


def test_loss_includes_vb_only_for_learned_sigma(tiny_dit):
    from dualerase.models.dit import build_dit

    loss = DiTLoss(make_scheduler())
    batch = (torch.rand(4, 1, 4, 4) * 2 - 1, torch.tensor([0, 1, 2, 3]))
    torch.manual_seed(0)
    learned = loss(tiny_dit, batch, reduce=False)
    torch.manual_seed(0)
    fixed = build_dit(num_classes=5, sample_size=4, in_channels=1, patch_size=2, layers=2, heads=2,
                      head_dim=8, learn_sigma=False)
    assert learned.shape == (4,)
    assert torch.all(torch.isfinite(learned))
    assert loss(fixed, batch).ndim == 0


def test_class_labels_only_and_exclude():
    assert class_labels(4, 2).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert class_labels(4, 3, only=2).tolist() == [2, 2, 2]
    assert class_labels(4, 1, exclude=1).tolist() == [0, 2, 3]
    with pytest.raises(ValueError):
        class_labels(4, 1, only=1, exclude=2)


def _recording(model):
    seen = []
    forward = model.forward

    def wrapped(x, t, class_labels=None, **kw):
        seen.append(class_labels.clone())
        return forward(x, t, class_labels=class_labels, **kw)

    model.forward = wrapped
    return seen


@pytest.mark.parametrize("only,exclude", [(3, None), (None, 3)])
def test_sampler_conditions_on_the_requested_classes(tiny_dit, only, exclude):
    seen = _recording(tiny_dit)
    labels = class_labels(num_classes(tiny_dit), 2, only=only, exclude=exclude)
    images = sample(tiny_dit, make_scheduler(), labels, num_steps=3, guidance=2.0, seed=0,
                    progress=False)
    assert images.shape == (len(labels), 1, 4, 4)
    assert len(seen) == 3
    for y in seen:  # conditional half, then the null class for guidance
        assert torch.equal(y[:len(labels)], labels)
        assert torch.all(y[len(labels):] == num_classes(tiny_dit))
    assert (3 in seen[0][:len(labels)].tolist()) == (only == 3)


def test_sampler_without_guidance_and_with_a_fixed_variance_scheduler(tiny_dit):
    seen = _recording(tiny_dit)
    labels = class_labels(5, 1)
    images = sample(tiny_dit, DDIMScheduler(num_train_timesteps=1000), labels, num_steps=4,
                    guidance=1.0, seed=0, progress=False)
    assert images.shape == (5, 1, 4, 4)
    assert torch.all(torch.isfinite(images))
    assert all(torch.equal(y, labels) for y in seen)


def test_sampling_is_reproducible_and_changes_with_the_seed(tiny_dit):
    labels = class_labels(5, 2)
    a = sample(tiny_dit, make_scheduler(), labels, num_steps=3, guidance=1.5, seed=1, batch_size=10,
               progress=False)
    b = sample(tiny_dit, make_scheduler(), labels, num_steps=3, guidance=1.5, seed=1, batch_size=10,
               progress=False)
    c = sample(tiny_dit, make_scheduler(), labels, num_steps=3, guidance=1.5, seed=2, batch_size=10,
               progress=False)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_saved_model_loads_back_and_samples_identically(tiny_dit, tmp_path):
    tiny_dit.save_pretrained(tmp_path / "m")
    loaded = load_dit(str(tmp_path / "m"))
    labels = class_labels(5, 2)
    a = sample(tiny_dit, make_scheduler(), labels, num_steps=3, guidance=1.5, seed=0,
               progress=False)
    b = sample(loaded, make_scheduler(), labels, num_steps=3, guidance=1.5, seed=0, progress=False)
    assert torch.equal(a, b)


def test_sampler_decodes_latents_through_a_vae():
    from diffusers import AutoencoderKL

    from dualerase.models.dit import build_dit

    torch.manual_seed(0)
    latent = build_dit(num_classes=5, sample_size=4, in_channels=4, patch_size=2, layers=1, heads=2,
                       head_dim=8)
    vae = AutoencoderKL(block_out_channels=[32, 32], in_channels=3, out_channels=3,
                        latent_channels=4, down_block_types=["DownEncoderBlock2D"] * 2,
                        up_block_types=["UpDecoderBlock2D"] * 2)
    images = sample(latent, make_scheduler(), class_labels(5, 1), num_steps=2, guidance=1.5, seed=0,
                    vae=vae, progress=False)
    assert images.shape == (5, 3, 8, 8)
    assert torch.all(torch.isfinite(images))


def test_digits_training_killed_midway_resumes_to_the_same_weights(tmp_path, monkeypatch):
    from dualerase.models import digits

    recipe = digits.DigitsRecipe(steps=25, batch_size=16)
    whole = digits.train_digits_dit(recipe, progress=False)
    checkpoint = tmp_path / "partial.pt"
    calls = {"n": 0}
    real_step = torch.optim.AdamW.step

    def dying_step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 18:
            # killed during step 18: checkpoints after steps 5, 10 and 15 exist
            raise KeyboardInterrupt
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        digits.train_digits_dit(recipe, progress=False, checkpoint=checkpoint, checkpoint_every=5)
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    assert torch.load(checkpoint, weights_only=False)["step"] == 15
    resumed = digits.train_digits_dit(recipe, progress=False, checkpoint=checkpoint,
                                      checkpoint_every=5)
    assert not changed(resumed, whole)


def test_a_dit_without_learned_sigma_samples_with_the_fixed_variance_and_trains_on_the_mse():
    from dualerase.models.dit import build_dit, fixed_variance, learns_sigma

    torch.manual_seed(0)
    fixed = build_dit(num_classes=5, sample_size=4, in_channels=1, patch_size=2, layers=2, heads=2,
                      head_dim=8, learn_sigma=False)
    assert not learns_sigma(fixed)
    labels = class_labels(5, 2)
    kw = dict(num_steps=3, guidance=1.5, seed=0, progress=False)
    # the evaluation's scheduler: learned variance asked
    images = sample(fixed, make_scheduler(), labels, **kw)
    assert images.shape == (10, 1, 4, 4)
    assert torch.all(torch.isfinite(images))
    assert torch.equal(images, sample(fixed, fixed_variance(make_scheduler()), labels, **kw))
    loss = DiTLoss(make_scheduler())
    batch = (torch.rand(4, 1, 4, 4) * 2 - 1, torch.tensor([0, 1, 2, 3]), torch.arange(4))
    x0, _, t, noise, xt = loss._noised(fixed, batch)
    with torch.no_grad():
        mse = ((fixed(xt, t, class_labels=batch[1]).sample - noise) ** 2).flatten(1).mean(1)
        # no VLB term: nothing predicts a variance
        assert torch.allclose(loss(fixed, batch, reduce=False), mse)


def test_our_sampler_gives_ditpipelines_images_for_the_same_noise():
    """Configured alike (a 1000-class latent DiT and VAE, DDIM with eta 0: no step noise, guidance
    on every channel, the initial noise from the same generator state), our sampler and diffusers'
    DiTPipeline give the same images."""
    from diffusers import AutoencoderKL, DiTPipeline

    from dualerase.data.streams import seeded_generator
    from dualerase.models.dit import build_dit

    torch.manual_seed(0)
    model = build_dit(num_classes=1000, sample_size=4, in_channels=4, patch_size=2, layers=2,
                      heads=2, head_dim=8)
    vae = AutoencoderKL(block_out_channels=[32, 32], in_channels=3, out_channels=3,
                        latent_channels=4, down_block_types=["DownEncoderBlock2D"] * 2,
                        up_block_types=["UpDecoderBlock2D"] * 2, layers_per_block=1).eval()
    ddim = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                clip_sample=False, timestep_spacing="linspace")
    pipe = DiTPipeline(transformer=model, vae=vae, scheduler=DDIMScheduler(**ddim))
    pipe.set_progress_bar_config(disable=True)
    labels, seed, steps, guidance = [207, 3, 999], 3, 6, 4.0
    kw = dict(num_steps=steps, guidance=guidance, seed=seed, progress=False)
    theirs = pipe(labels, guidance_scale=guidance, generator=seeded_generator(seed, 0),
                  num_inference_steps=steps, output_type="pt").images  # in [0, 1]

    def ours(**extra):
        """Our images for `labels`, in DiTPipeline's range [0, 1]."""
        images = sample(model, DDIMScheduler(**ddim), torch.tensor(labels), vae=vae,
                        **{**kw, **extra})
        return (images / 2 + 0.5).clamp(0, 1)

    # Not bit for bit: DiTPipeline decodes latents times 1 / scaling_factor, we divide by it (ulps
    # apart).
    assert (ours() - theirs).abs().max() < 1e-5
    latents = sample(model, DDIMScheduler(**ddim), torch.tensor(labels), **kw)
    with torch.no_grad():
        decoded_their_way = (
            vae.decode(1 / vae.config.scaling_factor * latents).sample / 2 + 0.5).clamp(0, 1)
    assert torch.equal(decoded_their_way, theirs)  # the same latents, bit for bit
    # The comparison can fail: guidance on 3 of the 4 channels, or other noise, lands far away.
    assert (ours(guidance_channels=3) - theirs).abs().max() > 1e-3
    assert (ours(seed=seed + 1) - theirs).abs().max() > 1e-3


def test_the_first_training_names_its_cache_and_suggests_one_thread_on_a_busy_machine(
        tmp_path, monkeypatch, capsys):
    from dualerase.models.digits import DigitsRecipe, prepare_digits_dit

    monkeypatch.setenv("DUALERASE_HOME", str(tmp_path))
    monkeypatch.setattr("os.getloadavg", lambda: (3.0, 3.0, 3.0))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        folder = prepare_digits_dit(DigitsRecipe(steps=2, train_threads=None), progress=True)
        out = capsys.readouterr().out
        prepare_digits_dit(DigitsRecipe(steps=4), progress=True)  # one thread: no hint
    finally:
        torch.set_num_threads(threads)
    assert f"training the digits model once (2 steps), cached at {folder}" in out
    assert "the machine is busy (load 3.0" in out and "--set digits.train_threads=1" in out
    assert "busy" not in capsys.readouterr().out
    monkeypatch.setattr("os.getloadavg", lambda: (0.1, 0.1, 0.1))
    prepare_digits_dit(DigitsRecipe(steps=3), progress=True)
    assert "busy" not in capsys.readouterr().out
