"""The image-like tokenizer: a convolutional VQ autoencoder on a token grid.

Used for rgb, depth, normals, semseg and feature maps. The shape of the network is chosen for
speed on CPUs as much as for quality: convolutions are slow at high resolution with few channels
and fast at low resolution with many, so the input is first folded into channels
(space-to-depth by `space_to_depth`, e.g. 64x64x3 -> 16x16x48), all the work happens at low
resolution, and the decoder unfolds its output the same way (depth-to-space, a "sub-pixel"
convolution). Upsampling inside the decoder is sub-pixel too.

    encoder: s2d(s) -> conv3x3 -> [res blocks, stride-2 conv] x (len(widths) - 1) -> res blocks
             -> norm, act, conv1x1 -> latents [B, h, w, quantizer.input_dim]
    quantizer: VectorQuantizer | FSQ -> codes [B, h, w] int32
    decoder: conv3x3 -> res blocks -> [sub-pixel x2, res blocks] x (len(widths) - 1)
             -> norm, act, conv3x3 -> d2s(s) -> [B, H, W, out_channels]

grid = resolution / patch_size, patch_size = space_to_depth * 2 ** (len(widths) - 1).
Semseg inputs are class ids, embedded per pixel (`class_embed_dim`) before the encoder; its
output is per-pixel logits over the classes.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from m4.tokenizers.quantizers import QuantizerOutput, build_quantizer


def space_to_depth(x: jax.Array, s: int) -> jax.Array:
    """[B, H, W, C] -> [B, H/s, W/s, s*s*C]."""
    if s == 1:
        return x
    b, h, w, c = x.shape
    x = x.reshape(b, h // s, s, w // s, s, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h // s, w // s, s * s * c)


def depth_to_space(x: jax.Array, s: int) -> jax.Array:
    """[B, h, w, s*s*C] -> [B, h*s, w*s, C] (inverse of `space_to_depth`)."""
    if s == 1:
        return x
    b, h, w, c = x.shape
    c_out = c // (s * s)
    x = x.reshape(b, h, w, s, s, c_out).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h * s, w * s, c_out)


class Norm(nnx.Module):
    """GroupNorm (`groups` > 0) or nothing; kept behind one switch so speed can be measured."""

    def __init__(self, channels: int, groups: int, *, rngs: nnx.Rngs):
        self.norm = (nnx.GroupNorm(channels, num_groups=math.gcd(groups, channels), rngs=rngs)
                     if groups > 0 else None)

    def __call__(self, x: jax.Array) -> jax.Array:
        return x if self.norm is None else self.norm(x)


class ResBlock(nnx.Module):
    def __init__(self, channels: int, groups: int, kernel: int, *, rngs: nnx.Rngs):
        self.norm1 = Norm(channels, groups, rngs=rngs)
        self.conv1 = nnx.Conv(channels, channels, (kernel, kernel), rngs=rngs)
        self.norm2 = Norm(channels, groups, rngs=rngs)
        # The second convolution starts at zero so that each block starts as the identity:
        # deep stacks then train stably without normalisation, too.
        self.conv2 = nnx.Conv(channels, channels, (kernel, kernel),
                              kernel_init=nnx.initializers.zeros, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.conv1(nnx.silu(self.norm1(x)))
        h = self.conv2(nnx.silu(self.norm2(h)))
        return x + h


class Encoder(nnx.Module):
    def __init__(self, in_channels: int, config, out_dim: int, *, rngs: nnx.Rngs):
        s, widths, groups = config.space_to_depth, tuple(config.widths), config.norm_groups
        k = kernel_sizes(config)[0]
        self.s = s
        self.stem = nnx.Conv(in_channels * s * s, widths[0], (k, k), rngs=rngs)
        stages, downs = [], []
        for i, width in enumerate(widths):
            stages.append(nnx.List([ResBlock(width, groups, k, rngs=rngs)
                                    for _ in range(config.blocks_per_stage)]))
            if i + 1 < len(widths):
                downs.append(nnx.Conv(width, widths[i + 1], (3, 3), strides=(2, 2), rngs=rngs))
        self.stages = nnx.List(stages)
        self.downs = nnx.List(downs)
        self.mid = nnx.List([ResBlock(widths[-1], groups, k, rngs=rngs)
                             for _ in range(config.get("mid_blocks", 0))])
        self.norm_out = Norm(widths[-1], groups, rngs=rngs)
        self.proj = nnx.Conv(widths[-1], out_dim, (1, 1), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.stem(space_to_depth(x, self.s))
        for i, blocks in enumerate(self.stages):
            for block in blocks:
                h = block(h)
            if i < len(self.downs):
                h = self.downs[i](h)
        for block in self.mid:
            h = block(h)
        return self.proj(nnx.silu(self.norm_out(h)))


class Decoder(nnx.Module):
    def __init__(self, in_dim: int, config, out_channels: int, *, rngs: nnx.Rngs):
        s, groups = config.space_to_depth, config.norm_groups
        widths = tuple(reversed(config.get("decoder_widths", None) or config.widths))
        k = kernel_sizes(config)[1]
        self.s = s
        self.stem = nnx.Conv(in_dim, widths[0], (k, k), rngs=rngs)
        self.mid = nnx.List([ResBlock(widths[0], groups, k, rngs=rngs)
                             for _ in range(config.get("mid_blocks", 0))])
        stages, ups = [], []
        for i, width in enumerate(widths):
            stages.append(nnx.List([ResBlock(width, groups, k, rngs=rngs)
                                    for _ in range(config.blocks_per_stage)]))
            if i + 1 < len(widths):
                # Sub-pixel upsampling: a conv at the low resolution makes 4x the channels,
                # depth-to-space spreads them over a 2x finer grid.
                ups.append(nnx.Conv(width, 4 * widths[i + 1], (k, k), rngs=rngs))
        self.stages = nnx.List(stages)
        self.ups = nnx.List(ups)
        self.norm_out = Norm(widths[-1], groups, rngs=rngs)
        self.head = nnx.Conv(widths[-1], out_channels * s * s, (k, k), rngs=rngs)

    def __call__(self, q: jax.Array) -> jax.Array:
        h = self.stem(q)
        for block in self.mid:
            h = block(h)
        for i, blocks in enumerate(self.stages):
            for block in blocks:
                h = block(h)
            if i < len(self.ups):
                h = depth_to_space(self.ups[i](h), 2)
        return depth_to_space(self.head(nnx.silu(self.norm_out(h))), self.s)


def kernel_sizes(config) -> tuple[int, int]:
    """(encoder, decoder) convolution sides: `kernel_size` (default 3) and `decoder_kernel_size`
    (0 or absent: the encoder's).

    Kernel 1 with a single stage (`widths` of length 1, so space_to_depth = patch_size) makes the
    encoder *local*: a token is the code of its own patch alone, a function a 4M can learn from
    the pixels (or geometry) at that position. Codes of the default 3x3 network depend on the
    neighbourhood too, and the demo's 4M never got past a per-position prior on them (rgb token
    accuracy 0.10 even from the full image). A local decoder decodes each code to its own patch
    alone (blocky); a 3x3 decoder draws smooth edges across patches from neighbouring codes."""
    encoder = int(config.get("kernel_size", 3))
    decoder = int(config.get("decoder_kernel_size", 0)) or encoder
    for field, k in (("kernel_size", encoder), ("decoder_kernel_size", decoder)):
        if k < 1 or k % 2 == 0:
            raise ValueError(f"model.{field}: expected an odd size >= 1, got {k}")
    return encoder, decoder


def grid_size(config, resolution: int) -> int:
    """Token grid side for an input side `resolution`, with a clear error if it does not fit."""
    patch = config.space_to_depth * 2 ** (len(config.widths) - 1)
    if patch != config.patch_size:
        raise ValueError(
            f"model.patch_size={config.patch_size} does not match the network: space_to_depth "
            f"({config.space_to_depth}) * 2**(len(widths) - 1) ({len(config.widths) - 1}) = "
            f"{patch}")
    if resolution % patch:
        raise ValueError(f"input side {resolution} is not a multiple of model.patch_size {patch}")
    return resolution // patch


class ImageVQ(nnx.Module):
    """Encoder + quantizer + decoder for one image-like modality.

    Args:
      model: config block (widths, space_to_depth, patch_size, blocks_per_stage, mid_blocks,
        norm_groups, class_embed_dim).
      quantizer: config block (see `build_quantizer`).
      channels: input channels of the normalised input (ignored for class ids).
      num_classes: > 0 for class-id inputs (semseg): embedded in, logits out.
    """

    def __init__(self, model, quantizer, *, channels: int, num_classes: int = 0,
                 rngs: nnx.Rngs):
        self.num_classes = num_classes
        if num_classes:
            embed_dim = model.get("class_embed_dim", 8)
            self.class_embed = nnx.Embed(num_classes, embed_dim, rngs=rngs)
            in_channels, out_channels = embed_dim, num_classes
        else:
            self.class_embed = None
            in_channels = out_channels = channels
        self.quantizer = build_quantizer(quantizer, rngs=rngs)
        self.encoder = Encoder(in_channels, model, self.quantizer.input_dim, rngs=rngs)
        self.decoder = Decoder(self.quantizer.input_dim, model, out_channels, rngs=rngs)

    @property
    def codebook_size(self) -> int:
        return self.quantizer.codebook_size

    def _embed(self, x: jax.Array) -> jax.Array:
        if self.class_embed is not None:
            return self.class_embed(x.astype(jnp.int32))   # [B, H, W] -> [B, H, W, E]
        return x

    def __call__(self, x: jax.Array, *, train: bool = False,
                 rng: jax.Array | None = None) -> tuple[jax.Array, QuantizerOutput]:
        """Normalised input -> (reconstruction or logits [B, H, W, C], quantizer output)."""
        z = self.encoder(self._embed(x))                         # [B, h, w, D]
        qout = self.quantizer(z, train=train, rng=rng)
        return self.decoder(qout.quantized), qout

    def encode(self, x: jax.Array) -> jax.Array:
        """Normalised input -> codes [B, h, w] int32."""
        return self.quantizer.encode(self.encoder(self._embed(x)))

    def decode(self, codes: jax.Array) -> jax.Array:
        """Codes [B, h, w] -> reconstruction (normalised) or class logits [B, H, W, C]."""
        return self.decoder(self.quantizer.lookup(codes))


def reconstruction_loss(kind: str, output: jax.Array, target: jax.Array, *,
                        beta: float = 1.0, class_weights: jax.Array | None = None) -> jax.Array:
    """Per-modality reconstruction loss (reference: MSE, smooth-L1, or CE over classes).

    `beta` is smooth-L1's switch point from quadratic to linear (the reference uses 1.0).
    `class_weights` [num_classes] (CE only): a weighted mean over pixels, so rare, thin classes
    (figures' limbs) count for more than their pixel share.
    """
    if kind == "mse":
        return jnp.mean((output - target) ** 2)
    if kind == "smooth_l1":
        diff = jnp.abs(output - target)
        return jnp.mean(jnp.where(diff < beta, 0.5 * diff ** 2 / beta, diff - 0.5 * beta))
    if kind == "ce":
        labels = target.astype(jnp.int32)
        logp = jax.nn.log_softmax(output, axis=-1)
        nll = -jnp.take_along_axis(logp, labels[..., None], -1)[..., 0]
        if class_weights is None:
            return jnp.mean(nll)
        w = jnp.take(class_weights, labels)
        return jnp.sum(w * nll) / jnp.sum(w)
    raise ValueError(f"loss must be 'mse', 'smooth_l1' or 'ce', got {kind!r}")
