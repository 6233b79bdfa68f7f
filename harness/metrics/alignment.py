"""Text-image alignment: CLIP score (both input conventions of docs/evaluation.md#metrics) and ImageReward-v1.0.

No package ships these weights: they come from a local path or the Hugging Face hub, and a missing one
fails with :class:`MetricUnavailable` naming what to fetch. The code paths are the real ones; the tests
run them on small random-weight models.

ImageReward: the ``image-reward`` package cannot share this environment (it imports helpers that
transformers 5 removed from ``transformers.modeling_utils``, pins ``timm==0.6.13`` and ``fairscale``, and
imports OpenAI's ``clip`` at package import). Its scoring path is small, so it is rebuilt here from
transformers' BLIP classes — ``BlipVisionModel`` is BLIP's ViT, ``BlipTextModel`` is BLIP's ``med.py``
BERT with cross-attention — and ``ImageReward.pt`` is loaded into it with its keys renamed.
"""

from __future__ import annotations

import functools
import json
import math
import re
from pathlib import Path

import torch
from torch import nn

from dsbench.metrics.errors import MetricUnavailable

DEFAULT_CLIP = "openai/clip-vit-large-patch14"
CLIP_CONVENTIONS = ("uint8", "legacy")
IMAGE_REWARD_REPO = "THUDM/ImageReward"
IMAGE_REWARD_DIR = Path.home() / ".cache" / "ImageReward"  # the image-reward package's download root
IMAGE_REWARD_FILES = ("ImageReward.pt", "med_config.json")
IMAGE_REWARD_TOKENIZER = "bert-base-uncased"


def _from_pretrained(cls, name: str, what: str, hint: str):
    """``cls.from_pretrained(name)``, or MetricUnavailable naming the weights and how to get them."""
    try:
        return cls.from_pretrained(name)
    except (OSError, ValueError) as err:  # not a local dir, not in the HF cache, hub unreachable, bad repo id
        raise MetricUnavailable(
            f"{what} {name!r} is not available: neither a local directory nor in the "
            f"Hugging Face cache, and the hub could not provide it ({type(err).__name__}). "
            f"{hint}"
        ) from None


def _has_files(name: str, needs: tuple) -> bool:
    """Whether ``name`` — a local directory or a Hugging Face hub id — has ``needs`` (file names, or tuples of
    alternatives) in the directory, in the hub cache, or, unless offline, on the reachable hub. Loads nothing."""
    from huggingface_hub import constants, file_exists, try_to_load_from_cache

    folder = Path(name).expanduser()
    alternatives = [(n,) if isinstance(n, str) else n for n in needs]
    if folder.is_dir() or not _is_repo_id(name):
        return all(any((folder / f).is_file() for f in alt) for alt in alternatives)
    if all(any(isinstance(try_to_load_from_cache(name, f), str) for f in alt) for alt in alternatives):
        return True
    if constants.HF_HUB_OFFLINE:
        return False
    try:  # not cached: from_pretrained would download, so ask the hub whether it can (one small request)
        return file_exists(name, alternatives[0][0])
    except Exception:  # unreachable, no such repo
        return False


def _is_repo_id(name: str) -> bool:
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except Exception:
        return False
    return True


def check_clip(model: str = DEFAULT_CLIP) -> None:
    """MetricUnavailable (one line) unless the CLIP model, processor and tokenizer can be had; loads nothing."""
    needs = (
        "config.json",
        ("model.safetensors", "pytorch_model.bin"),
        ("preprocessor_config.json", "processor_config.json"),
        ("tokenizer.json", "vocab.json"),
    )
    if not _has_files(str(model), needs):
        raise MetricUnavailable(
            f"CLIP model {model!r} is not available: neither a local directory with its config, "
            "weights, image processor and tokenizer files nor in the Hugging Face cache, and the "
            f"hub cannot be reached; download it (huggingface-cli download {model}) or pass "
            "clip_model=<local directory>"
        )


def check_image_reward(model: str | Path | None = None, tokenizer: str = IMAGE_REWARD_TOKENIZER) -> None:
    """MetricUnavailable (one line) unless ImageReward-v1.0's files and its tokenizer can be had; loads nothing."""
    if model is not None:
        _image_reward_files(model)  # checks the two files exist
    elif not (
        all((IMAGE_REWARD_DIR / f).is_file() for f in IMAGE_REWARD_FILES)
        or _has_files(IMAGE_REWARD_REPO, IMAGE_REWARD_FILES)
    ):
        raise MetricUnavailable(
            f"ImageReward-v1.0 weights are not available: need {', '.join(IMAGE_REWARD_FILES)} "
            f"from {IMAGE_REWARD_REPO} in {IMAGE_REWARD_DIR} or the Hugging Face cache "
            f"(huggingface-cli download {IMAGE_REWARD_REPO}), or pass "
            "image_reward_model=<directory>"
        )
    if not _has_files(str(tokenizer), ("vocab.txt",)):
        raise MetricUnavailable(
            f"ImageReward's tokenizer {tokenizer!r} is not available locally nor from the hub; "
            f"download it (huggingface-cli download {tokenizer}) or pass "
            "image_reward_tokenizer=<dir>"
        )


# ---------------------------------------------------------------------------------------------- CLIP score


@functools.lru_cache(maxsize=4)
def load_clip(model: str = DEFAULT_CLIP, device: str = "cpu"):
    """(CLIPModel, CLIPProcessor) from a local directory or a hub name, loaded once per (model, device)."""
    from transformers import CLIPModel, CLIPProcessor

    hint = (
        f"Download it (huggingface-cli download {model}) or pass clip_model=<local directory with the "
        "model, tokenizer and image processor>."
    )
    clip = _from_pretrained(CLIPModel, model, "CLIP model", hint)
    processor = _from_pretrained(CLIPProcessor, model, "CLIP processor", hint)
    return clip.eval().requires_grad_(False).to(device), processor


def clip_inputs(processor, images: torch.Tensor, prompts: list[str], convention: str = "uint8", max_length: int = 77):
    """The processor's inputs under a docs/evaluation.md#metrics convention.

    ``uint8`` (B, correct): uint8 pixels, which the processor rescales by 1/255. ``legacy`` (A, the ToCa
    tools): float pixels in [0, 1], which the processor rescales by 1/255 again — nearly black images,
    the origin of the ≈16 scores. Prompts are truncated to the text model's ``max_length`` positions.
    """
    if convention not in CLIP_CONVENTIONS:
        raise ValueError(f"unknown CLIP convention {convention!r}; allowed: {', '.join(CLIP_CONVENTIONS)}")
    pixels = list(images) if convention == "uint8" else [image.float() / 255 for image in images]
    return processor(
        text=list(prompts), images=pixels, return_tensors="pt", padding=True, truncation=True, max_length=max_length
    )


def clip_per_image(
    images: torch.Tensor,
    prompts: list[str],
    *,
    model: str = DEFAULT_CLIP,
    convention: str = "uint8",
    device: str = "cpu",
    batch_size: int = 32,
) -> torch.Tensor:
    """100·max(cos(image, prompt), 0) of each image (torchmetrics' CLIPScore per pair), each image scored once."""
    clip, processor = load_clip(model, str(device))
    max_length = clip.config.text_config.max_position_embeddings
    scores = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            inputs = clip_inputs(
                processor, images[i : i + batch_size], prompts[i : i + batch_size], convention, max_length
            )
            out = clip(**{k: v.to(device) for k, v in inputs.items()})
            cos = nn.functional.cosine_similarity(out.image_embeds, out.text_embeds, dim=-1)
            scores.append((100 * cos.clamp(min=0)).double().cpu())
    return torch.cat(scores)


# ------------------------------------------------------------------------------------------- ImageReward


class ImageRewardModel(nn.Module):
    """ImageReward's scorer: BLIP ViT → BLIP text encoder cross-attending to the image → MLP on [CLS].

    The reward is normalised with the constants of ``ImageReward.ImageReward`` (v1.0).
    """

    MEAN, STD = 0.16717362830052426, 1.0333394966054072

    def __init__(self, vision_config, text_config):
        from transformers import BlipVisionModel
        from transformers.models.blip.modeling_blip_text import BlipTextModel

        super().__init__()
        self.vision = BlipVisionModel(vision_config)
        self.text = BlipTextModel(text_config, add_pooling_layer=False)
        width = text_config.hidden_size  # the original MLP: linear layers only, dropouts in between
        self.mlp = nn.Sequential(
            nn.Linear(width, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )
        self.image_size = vision_config.image_size

    def forward(self, pixel_values, input_ids, attention_mask) -> torch.Tensor:
        image = self.vision(pixel_values=pixel_values).last_hidden_state
        text = self.text(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=image,
            encoder_attention_mask=torch.ones(image.shape[:-1], dtype=torch.long, device=image.device),
        )
        reward = self.mlp(text.last_hidden_state[:, 0].float()).squeeze(-1)
        return (reward - self.MEAN) / self.STD


# timm-style BLIP ViT names (as in ImageReward.pt) → transformers' BlipVisionModel names
_VIT_RENAMES = [
    (r"^cls_token$", "embeddings.class_embedding"),
    (r"^pos_embed$", "embeddings.position_embedding"),
    (r"^patch_embed\.proj\.", "embeddings.patch_embedding."),
    (r"^norm\.", "post_layernorm."),
    (r"^blocks\.(\d+)\.norm1\.", r"encoder.layers.\1.layer_norm1."),
    (r"^blocks\.(\d+)\.norm2\.", r"encoder.layers.\1.layer_norm2."),
    (r"^blocks\.(\d+)\.attn\.qkv\.", r"encoder.layers.\1.self_attn.qkv."),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"encoder.layers.\1.self_attn.projection."),
    (r"^blocks\.(\d+)\.mlp\.", r"encoder.layers.\1.mlp."),
]


def convert_image_reward_state(state: dict) -> dict:
    """ImageReward.pt's state dict in :class:`ImageRewardModel`'s names (unused BLIP heads dropped)."""
    out = {}
    for key, value in state.items():
        if key.startswith("blip.visual_encoder."):
            key = key.removeprefix("blip.visual_encoder.")
            for pattern, repl in _VIT_RENAMES:
                key = re.sub(pattern, repl, key)
            out[f"vision.{key}"] = value
        elif key.startswith("blip.text_encoder.") and not key.endswith("position_ids"):
            out[f"text.{key.removeprefix('blip.text_encoder.')}"] = value
        elif key.startswith("mlp.layers."):
            out[f"mlp.{key.removeprefix('mlp.layers.')}"] = value
    return out


def _configs(state: dict, med_config: dict):
    """BLIP configs: the ViT read from the checkpoint's shapes (BLIP's ViTs have 64-wide heads and
    LayerNorm eps 1e-6), the text encoder from ``med_config.json`` with the ViT's width for cross-attention."""
    from transformers import BlipTextConfig, BlipVisionConfig

    width = state["blip.visual_encoder.cls_token"].shape[-1]
    patch = state["blip.visual_encoder.patch_embed.proj.weight"].shape[-1]
    side = math.isqrt(state["blip.visual_encoder.pos_embed"].shape[1] - 1) * patch
    depth = len({k.split(".")[3] for k in state if k.startswith("blip.visual_encoder.blocks.")})
    mlp = state["blip.visual_encoder.blocks.0.mlp.fc1.weight"].shape[0]
    vision = BlipVisionConfig(
        hidden_size=width,
        intermediate_size=mlp,
        num_hidden_layers=depth,
        num_attention_heads=width // 64,
        image_size=side,
        patch_size=patch,
        layer_norm_eps=1e-6,
        hidden_act="gelu",
    )
    fields = (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "hidden_act",
        "max_position_embeddings",
        "layer_norm_eps",
        "pad_token_id",
    )
    text = BlipTextConfig(**{k: med_config[k] for k in fields if k in med_config}, encoder_hidden_size=width)
    return vision, text


def _image_reward_files(path: str | Path | None) -> tuple[Path, Path]:
    """(ImageReward.pt, med_config.json): from ``path`` (a directory or the .pt file), else the package's
    download root, else the Hugging Face cache/hub (THUDM/ImageReward)."""
    if path is not None:
        path = Path(path)
        folder = path.parent if path.is_file() else path
        files = (path if path.is_file() else folder / IMAGE_REWARD_FILES[0], folder / IMAGE_REWARD_FILES[1])
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise MetricUnavailable(
                f"ImageReward weights not found: {', '.join(missing)} (the files of "
                f"{IMAGE_REWARD_REPO}: {', '.join(IMAGE_REWARD_FILES)})"
            )
        return files
    if all((IMAGE_REWARD_DIR / f).is_file() for f in IMAGE_REWARD_FILES):
        return IMAGE_REWARD_DIR / IMAGE_REWARD_FILES[0], IMAGE_REWARD_DIR / IMAGE_REWARD_FILES[1]
    from huggingface_hub import hf_hub_download

    try:
        return tuple(Path(hf_hub_download(IMAGE_REWARD_REPO, f)) for f in IMAGE_REWARD_FILES)
    except Exception as err:  # offline, unreachable, not cached
        raise MetricUnavailable(
            f"ImageReward-v1.0 weights are not available ({type(err).__name__}): need {', '.join(IMAGE_REWARD_FILES)} "
            f"from {IMAGE_REWARD_REPO} in {IMAGE_REWARD_DIR} or the Hugging Face cache "
            f"(huggingface-cli download {IMAGE_REWARD_REPO}), or pass image_reward_model=<directory>"
        ) from None


@functools.lru_cache(maxsize=2)
def load_image_reward(path: str | None = None, tokenizer: str = IMAGE_REWARD_TOKENIZER, device: str = "cpu"):
    """(ImageRewardModel with ImageReward-v1.0's weights, BERT tokenizer), loaded once."""
    from transformers import BertTokenizer

    weights_file, config_file = _image_reward_files(path)
    state = torch.load(weights_file, map_location="cpu", weights_only=True)
    model = ImageRewardModel(*_configs(state, json.loads(config_file.read_text())))
    missing = set(model.state_dict()) - set(convert_image_reward_state(state))
    if missing:
        raise MetricUnavailable(f"{weights_file} is not an ImageReward checkpoint: it lacks {sorted(missing)[:3]}...")
    model.load_state_dict(convert_image_reward_state(state))
    # BLIP also adds [DEC] and [ENC] to the vocabulary; prompts never contain them, so the ids are the same
    tok = _from_pretrained(
        BertTokenizer,
        tokenizer,
        "ImageReward's tokenizer",
        f"Download it (huggingface-cli download {tokenizer}) or pass image_reward_tokenizer=<dir>.",
    )
    return model.eval().requires_grad_(False).to(device), tok


def image_reward_pixels(images: torch.Tensor, size: int) -> torch.Tensor:
    """ImageReward's preprocessing on PIL images: bicubic resize of the short side, centre crop, CLIP norm."""
    from PIL import Image
    from torchvision import transforms as T

    transform = T.Compose(
        [
            T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(size),
            T.ToTensor(),
            T.Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
        ]
    )
    return torch.stack([transform(Image.fromarray(im.permute(1, 2, 0).cpu().numpy())) for im in images])


def image_reward_per_image(
    images: torch.Tensor,
    prompts: list[str],
    *,
    model: str | None = None,
    tokenizer: str = IMAGE_REWARD_TOKENIZER,
    device: str = "cpu",
    batch_size: int = 16,
) -> torch.Tensor:
    """ImageReward-v1.0 of each (image, prompt) pair; prompts padded/truncated to 35 tokens as the original."""
    scorer, tok = load_image_reward(None if model is None else str(model), tokenizer, str(device))
    rewards = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            text = tok(
                list(prompts[i : i + batch_size]),
                padding="max_length",
                truncation=True,
                max_length=35,
                return_tensors="pt",
            )
            pixels = image_reward_pixels(images[i : i + batch_size], scorer.image_size)
            rewards.append(
                scorer(pixels.to(device), text.input_ids.to(device), text.attention_mask.to(device))
                .double()
                .flatten()
                .cpu()
            )
    return torch.cat(rewards)
