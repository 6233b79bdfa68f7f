"""The embedded PixArt-α analogue ``shapes-pixart``: its dataset, its bundle (offline), sampling, methods."""

from __future__ import annotations

import pytest
import torch

import dsbench
from dsbench.data import shapes as S

# ---------------------------------------------------------------------------------------- dataset


def test_scenes_are_deterministic_and_seeded():
    a, b = S.sample_scenes(24, seed=5), S.sample_scenes(24, seed=5)
    assert torch.equal(a.images, b.images) and a.captions == b.captions and torch.equal(a.labels, b.labels)
    assert a.images.dtype == torch.uint8 and a.images.shape == (24, 3, 32, 32)
    assert a.labels.shape == (24, len(S.SLOTS), 3)
    c = S.sample_scenes(24, seed=6)
    assert c.captions != a.captions and not torch.equal(c.images, a.images)


def test_captions_and_labels_agree():
    sc = S.sample_scenes(64, seed=1, split="all")
    for cap, scene, lab in zip(sc.captions, sc.scenes, sc.labels):
        assert S.parse_caption(cap) == scene and S.caption(scene) == cap
        assert torch.equal(torch.from_numpy(S.labels_of(scene)), lab)
        assert int((lab[:, 0] > 0).sum()) == len(scene) == cap.count(" and ") + 1
    assert {len(s) for s in sc.scenes} == {1, 2}


def test_rendering_follows_the_caption():
    """The object's pixels sit at its anchor with its colour; the rest of the image is background."""
    scene = (("square", "red", "large", "left"),)
    img = torch.from_numpy(S.render([scene], seed=0)).int()[0]
    x, y = (int(v * 32) for v in S.POSITIONS["left"])
    assert img[0, y, x] > 180 and img[1, y, x] < 90 and img[2, y, x] < 90  # red at the left anchor
    assert img[:, 16, 26].max() < 60  # dark on the right
    small = torch.from_numpy(S.render([(("square", "red", "small", "left"),)], seed=0)).int()[0]
    assert (small[0] > 120).sum() < (img[0] > 120).sum() / 2


def test_held_out_split_is_disjoint_from_training():
    train_singles, train_pairs = S._split("train")
    held_singles, held_pairs = S._split("heldout")
    assert len(train_singles) + len(held_singles) == 240 and len(train_pairs) + len(held_pairs) == 2 * 48 * 48
    train = {S._key(s) for s in train_singles + train_pairs}
    assert not train & {S._key(s) for s in held_singles + held_pairs}
    assert all(S.is_held_out(s) for s in S.sample_descriptions(50, seed=0, split="heldout"))
    assert not any(S.is_held_out(s) for s in S.sample_descriptions(50, seed=0, split="train"))


# ----------------------------------------------------------------------------------------- bundle


@pytest.fixture(scope="module")
def bundle():
    import os

    from dsbench.models import zoo
    from dsbench.models.embedded import shapes_pixart

    if not (shapes_pixart.WEIGHTS / "transformer" / "config.json").exists():
        pytest.skip("shapes-pixart is not trained (python -m dsbench.models.embedded.shapes_pixart train)")
    old = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})  # loading needs no network
    try:
        yield zoo.load("shapes-pixart")
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_bundle_is_a_real_pixart_alpha_pipeline(bundle):
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, PixArtAlphaPipeline, PixArtTransformer2DModel
    from transformers import BertModel

    pipe = bundle.pipeline
    assert (
        bundle.family == "pixart"
        and bundle.kind == "embedded"
        and "shapes-pixart" in __import__("dsbench.models.zoo", fromlist=["available"]).available("embedded")
    )
    assert type(pipe) is PixArtAlphaPipeline and type(pipe.transformer) is PixArtTransformer2DModel
    assert isinstance(pipe.vae, AutoencoderKL) and isinstance(pipe.text_encoder, BertModel)
    assert isinstance(pipe.scheduler, DPMSolverMultistepScheduler)
    assert pipe.scheduler.config.algorithm_type == "dpmsolver++"
    cfg = pipe.transformer.config
    assert cfg.norm_type == "ada_norm_single" and cfg.caption_channels == pipe.text_encoder.config.hidden_size
    assert (cfg.sample_size // cfg.patch_size) ** 2 == 64  # image tokens
    assert all(b.attn2 is not None and b.attn2.is_cross_attention for b in pipe.transformer.transformer_blocks)
    assert bundle.sampler.scheduler == "dpm-solver++" and bundle.sampler.guidance_scale > 1
    assert bundle.feature_extractor == "shapes-classifier"


def test_conditions_references_and_classifier(bundle):
    conds = bundle.conditions(12, 0)
    assert conds == bundle.conditions(12, 0) and conds != bundle.conditions(12, 1)
    assert all(S.is_held_out(S.parse_caption(c)) for c in conds)
    refs = bundle.references(16)
    assert refs.dtype == torch.uint8 and refs.shape == (16, 3, 32, 32)
    clf = bundle.classifier
    assert clf.features(refs).shape[0] == 16 and clf.logits(refs).shape == (16, 65)
    real = S.sample_scenes(200, seed=11, split="heldout")
    scores = bundle.alignment(real.images, real.captions)
    assert scores["attribute_accuracy"] >= 0.98 and scores["layout_accuracy"] >= 0.95


def test_sampling_gives_uint8_images_that_match_their_captions(bundle):
    conds = bundle.conditions(32, 3)
    images = bundle.sample(conds, seed=0)
    assert images.dtype == torch.uint8 and images.shape == (32, 3, 32, 32)
    assert torch.equal(bundle.sample(conds[:2], seed=0), images[:2])  # per-image seeds: batching does not matter
    scores = bundle.alignment(images, conds)
    # check.json: 1.00 over 320 held-out captions (issue 3 asks >= 0.90); chance is far lower (65 classes per slot)
    assert scores["attribute_accuracy"] >= 0.9 and scores["position_accuracy"] >= 0.95, scores


def test_toca_attaches_to_the_bundle_pipeline(bundle):
    from dsbench import methods

    conds = bundle.conditions(2, 4)
    plain = bundle.sample(conds, seed=1, steps=8)
    with dsbench.attach(bundle.pipeline, methods.build("toca")) as handle:
        cached = bundle.sample(conds, seed=1, steps=8)
        report = handle.report()
    assert cached.dtype == torch.uint8 and cached.shape == plain.shape
    assert report["num_steps"] == 8 and report["full_steps"][0] == 0
    assert torch.equal(bundle.sample(conds, seed=1, steps=8), plain)  # detached: the plain pipeline again
