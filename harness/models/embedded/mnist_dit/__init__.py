"""``mnist-dit``: the embedded DiT-XL/2 analogue — a class-conditional ``DiTTransformer2DModel`` on MNIST.

A real ``diffusers.DiTPipeline`` of the same classes as DiT-XL/2-256, small enough for a CPU:

* ``AutoencoderKL`` (trained here): 32×32 RGB (28×28 digits padded with black, grey replicated to 3
  channels) ↔ 8×8×4 latents; ``scaling_factor`` = 1 / std of the training latents.
* ``DiTTransformer2DModel``: ada_norm_zero blocks, patch 1 on the 8×8 latent (64 tokens), 6 layers,
  3 heads × 32 (hidden 96), ``num_embeds_ada_norm=1000`` with labels 0–9 (DiTPipeline hard-codes the null
  class 1000 for classifier-free guidance), ε-prediction (``out_channels=4``: no learned σ, which DDIM
  never uses). Trained with the DiT noise schedule (linear β 1e-4…0.02, 1000 steps), labels dropped to
  the null class with p = 0.1 (one draw per sample, shared by all blocks — diffusers' own per-module
  label dropout would draw independently in every block, so training runs the model in eval mode), EMA.
* ``DDIMScheduler(timestep_spacing="linspace")`` — DiT's reference respacing (docs/evaluation.md#metrics).

A CNN classifier trained on MNIST (``MNISTClassifier``) gives the domain metrics: class accuracy of
generated digits (alignment) and the features of FID/KID/PR (``feature_extractor="mnist-classifier"``).

Weights (safetensors, ≤ 20 MB each), configs, the training command and its log live in
``harness/models/embedded/weights/mnist-dit/`` (diffusers layout: ``DiTPipeline.from_pretrained`` on the
folder works too). Loading needs no network.

    python -m dsbench.models.embedded.mnist_dit train     # VAE, classifier, DiT (~15 min on one core)
    python -m dsbench.models.embedded.mnist_dit grid      # results/models/mnist-dit/samples.png
    python -m dsbench.models.embedded.mnist_dit check     # class accuracy of generated digits (≥ 90 %)
"""

from dsbench.models.embedded.mnist_dit.data import NUM_CLASSES, RESOLUTION, conditions, references, to_rgb_uint8
from dsbench.models.embedded.mnist_dit.model import (
    CLASSIFIER_CONFIG,
    DIT_CONFIG,
    NAME,
    NULL_CLASS,
    RESULTS,
    SAMPLER,
    SCHEDULER_CONFIG,
    VAE_CONFIG,
    WEIGHTS,
    MNISTClassifier,
    load,
    load_classifier,
    load_pipeline,
    load_vae,
)

__all__ = [
    "CLASSIFIER_CONFIG",
    "DIT_CONFIG",
    "NAME",
    "NULL_CLASS",
    "NUM_CLASSES",
    "RESOLUTION",
    "RESULTS",
    "SAMPLER",
    "SCHEDULER_CONFIG",
    "VAE_CONFIG",
    "WEIGHTS",
    "MNISTClassifier",
    "conditions",
    "load",
    "load_classifier",
    "load_pipeline",
    "load_vae",
    "references",
    "to_rgb_uint8",
]
