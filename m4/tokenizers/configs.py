"""Default tokenizer configs; the files in the top-level `tokenizers/` folder start from these.

A config file there is `get_config(arg=None)`; `arg="tiny"` shrinks everything so a test trains
in seconds. Every field can be overridden on the command line (`--config.train.num_steps=100`).
"""

from __future__ import annotations

import ml_collections


def _data(train_size: int = 10_000) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        scene=dict(resolution=64),        # SceneConfig fields (m4.data.scenes)
        train_seed=0,                     # training scenes: seed 0, indices [0, train_size)
        train_size=train_size,
        eval_seed=1_000_003,              # held-out scenes: another seed entirely
        eval_size=256,                    # evaluated during training
        cache_dir="",                     # "" -> <workdir>/scene_cache; shared across runs
        flip=True,                        # random horizontal flips (image modalities)
    ))


def _train(**overrides) -> ml_collections.ConfigDict:
    train = dict(
        batch_size=32,
        num_steps=2000,
        max_minutes=0.0,        # > 0: the schedule follows wall time and ends at this budget
        lr=1e-3,
        min_lr_ratio=0.02,      # cosine decays to lr * min_lr_ratio
        warmup_steps=100,
        b1=0.9,
        b2=0.99,
        weight_decay=1e-4,
        grad_clip=1.0,
        ema_decay=0.99,         # model EMA used for the exported tokenizer; 0 disables
        log_every=50,
        eval_every=500,
        checkpoint_every=500,
        keep_checkpoints=2,
        seed=0,
    )
    train.update(overrides)
    return ml_collections.ConfigDict(train)


def image_config(modality: str, arg: str | None = None, **model) -> ml_collections.ConfigDict:
    """An image-like tokenizer (rgb, depth, normals, semseg, features)."""
    config = ml_collections.ConfigDict()
    config.modality = modality
    config.kind = "image"
    config.data = _data()
    config.model = ml_collections.ConfigDict(dict(
        patch_size=8,            # input pixels per token side: 64x64 -> 8x8 tokens
        space_to_depth=4,        # fold 4x4 pixels into channels first (speed on CPUs)
        widths=(128, 256),       # channels per stage; len - 1 stride-2 stages
        decoder_widths=(),       # () -> same as widths
        blocks_per_stage=1,
        kernel_size=3,           # 1 with one stage: a local encoder (vqvae.kernel_sizes)
        decoder_kernel_size=0,   # 0: kernel_size
        mid_blocks=1,            # extra residual blocks at the token resolution
        norm_groups=0,           # GroupNorm groups; 0 = none (faster; zero-init residuals)
        class_embed_dim=8,       # semseg: per-pixel class embedding
    ))
    config.model.update(model)
    config.quantizer = ml_collections.ConfigDict(dict(
        kind="vq",               # "vq" (cosine codebook, EMA, dead-code restarts) | "fsq"
        codebook_size=1024,
        latent_dim=32,
        decay=0.99,
        commitment_weight=0.25,
        # A code is dead below (latents per batch / codebook_size) / coef EMA uses per step.
        # The reference uses 32; 8 restarts rarely used codes sooner, which keeps more of the
        # codebook in real use after short trainings (measured: usage on held-out scenes).
        dead_code_coef=8.0,
        levels=(8, 5, 5, 5),     # fsq only; codebook_size is then prod(levels)
    ))
    config.loss = ml_collections.ConfigDict(dict(
        kind="mse",                   # "mse" | "smooth_l1" (beta: its switch point); class ids: CE
        beta=1.0,
        class_weighting="none",       # class ids: "none" | "sqrt_inverse_frequency"
    ))
    config.train = _train()
    if arg == "tiny":
        shrink_image(config)
    elif arg:
        raise ValueError(f"get_config: unknown argument {arg!r} (known: 'tiny')")
    return config


def shrink_image(config: ml_collections.ConfigDict) -> None:
    """A network and schedule that train in seconds (tests)."""
    config.data.scene = dict(resolution=32, feature_patch=8)
    config.data.train_size = 64
    config.data.eval_size = 16
    config.model.widths = (8, 16)
    config.model.space_to_depth = 2
    config.model.patch_size = 4
    config.model.mid_blocks = 0
    config.quantizer.codebook_size = 32
    config.quantizer.latent_dim = 8
    config.train.update(batch_size=8, num_steps=6, warmup_steps=2, log_every=2, eval_every=4,
                        checkpoint_every=3)


def poses_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.modality = "poses"
    config.kind = "poses"
    config.data = _data(train_size=20_000)
    config.data.flip = False
    config.model = ml_collections.ConfigDict(dict(tokens_per_figure=8, width=256, depth=3))
    config.quantizer = ml_collections.ConfigDict(dict(
        kind="vq", codebook_size=1024, latent_dim=32, decay=0.99, commitment_weight=0.25,
        dead_code_coef=32.0, levels=(8, 5, 5, 5)))
    config.loss = ml_collections.ConfigDict(dict(kind="pose", beta=0.02, visibility_weight=0.1))
    config.train = _train(batch_size=256, num_steps=4000, lr=2e-3, warmup_steps=200,
                          eval_every=1000, checkpoint_every=1000)
    if arg == "tiny":
        config.data.scene = dict(resolution=32, feature_patch=8)
        config.data.train_size = 64
        config.data.eval_size = 16
        config.model.update(tokens_per_figure=2, width=16, depth=1)
        config.quantizer.update(codebook_size=16, latent_dim=4)
        config.train.update(batch_size=16, num_steps=6, warmup_steps=2, log_every=2,
                            eval_every=4, checkpoint_every=3)
    elif arg:
        raise ValueError(f"get_config: unknown argument {arg!r} (known: 'tiny')")
    return config


def text_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.modality = "caption"
    config.kind = "text"
    config.data = _data(train_size=20_000)
    config.text = ml_collections.ConfigDict(dict(
        vocab_size=1024,         # upper bound; a small grammar may use fewer pieces
        model_type="bpe",
        num_sentinels=128,       # [S_0]..[S_127] at ids 4..131
        max_len=128,             # tokens per caption, [EOS] included
    ))
    if arg == "tiny":
        config.data.scene = dict(resolution=32, feature_patch=8)
        config.data.train_size = 200
        config.data.eval_size = 16
        config.text.vocab_size = 600
    elif arg:
        raise ValueError(f"get_config: unknown argument {arg!r} (known: 'tiny')")
    return config
