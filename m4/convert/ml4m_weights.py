"""Reference state dict -> m4 FourM state: the key mapping and a lazy, sharded reader.

Every m4 variable gets a `Recipe`: its shape and the reference tensors (`Piece`s) that fill
regions of it, each with the transform from the PyTorch layout (Linear weights are (out, in);
fused qkv / kv split into (q|k|v) blocks of heads of head_dim consecutive features). Regions no
piece covers are zero (e.g. encoder token rows of a target-only modality: the reference has no
such table).

Arrays are built with `jax.make_array_from_callback`: each device shard reads only the reference
tensors that overlap it, from the memory-mapped safetensors file, so the host never holds more
than the converted model plus one variable's sources.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import numpy as np
from flax import nnx

from m4.convert.errors import ConversionError
from m4.convert.safetensors_io import SafetensorsReader
from m4.model.adapters import sincos_table
from m4.model.configs import FourMConfig

# A loaded sin-cos buffer may differ from m4's own table by float32 rounding only: m4 checkpoints
# keep parameters and rebuild fixed tables from the config, so anything else would be lost.
SINCOS_TOLERANCE = 1e-5


@dataclasses.dataclass(frozen=True)
class Piece:
    key: str                                   # reference state-dict key
    shape: tuple[int, ...]                     # its expected shape
    dest: tuple                                # region of the m4 variable (ints / slices)
    transform: Callable[[np.ndarray], np.ndarray] = lambda a: a


@dataclasses.dataclass
class Recipe:
    shape: tuple[int, ...]
    pieces: list[Piece]


@dataclasses.dataclass(frozen=True)
class Check:
    """A reference tensor that must satisfy a condition (whether or not it is loaded)."""
    key: str
    shape: tuple[int, ...]
    kind: str               # "zero" (bias buffer of a bias-free norm) | "equal" (to `other`) |
                            # "table" (close to `expected`)
    other: str = ""
    hint: str = ""
    expected: object = None


def _t(a):  # Linear (out, in) -> (in, out)
    return a.T


def build_recipes(model_abstract, config: FourMConfig, *, tied: bool
                  ) -> tuple[dict[tuple, Recipe], list[Check]]:
    """{m4 state path: Recipe} for every variable of `model_abstract`, and the checks."""
    d, h = config.dim, config.num_heads
    hd, hidden = config.head_dim, config.mlp_hidden
    vocab = config.vocab
    recipes: dict[tuple, Recipe] = {}
    checks: list[Check] = []

    def add(path, shape, pieces):
        recipes[tuple(path)] = Recipe(tuple(shape), list(pieces))

    def norm(path, key, depth=None):
        """LayerNorm `key` (key may contain {i} for stacked layers)."""
        keys = [key.format(i=i) for i in range(depth)] if depth else [key]
        lead = (depth,) if depth else ()
        dest = [(i,) for i in range(depth)] if depth else [()]
        add(path + ("scale",), lead + (d,),
            [Piece(f"{k}.weight", (d,), ds) for k, ds in zip(keys, dest)])
        if config.norm_bias:
            add(path + ("bias",), lead + (d,),
                [Piece(f"{k}.bias", (d,), ds) for k, ds in zip(keys, dest)])
        else:
            checks.extend(Check(f"{k}.bias", (d,), "zero",
                                hint="norm_bias is false, so the bias must be a zero buffer")
                          for k in keys)

    def stacked_linear(path, key, depth, ref_shape, m4_shape, transform, bias=None):
        add(path, (depth,) + m4_shape,
            [Piece(key.format(i=i) + ".weight", ref_shape, (i,), transform) for i in range(depth)])
        if bias is not None:
            bias_path, bias_shape = bias
            add(bias_path, (depth,) + bias_shape,
                [Piece(key.format(i=i) + ".bias", (ref_shape[0],), (i,),
                       lambda a, s=bias_shape: a.reshape(s)) for i in range(depth)])

    # -- blocks ----------------------------------------------------------------------------------
    def attention(side, name, key, depth):
        p = (side, name)
        stacked_linear(p + ("qkv",), f"{key}.qkv", depth, (3 * d, d), (d, 3, h, hd),
                       lambda a: a.T.reshape(d, 3, h, hd),
                       (p + ("qkv_bias",), (3, h, hd)) if config.qkv_bias else None)
        stacked_linear(p + ("proj",), f"{key}.proj", depth, (d, d), (h, hd, d),
                       lambda a: a.T.reshape(h, hd, d),
                       (p + ("proj_bias",), (d,)) if config.proj_bias else None)

    def cross_attention(key, depth):
        p = ("decoder", "cross_attn")
        stacked_linear(p + ("q",), f"{key}.q", depth, (d, d), (d, h, hd),
                       lambda a: a.T.reshape(d, h, hd),
                       (p + ("q_bias",), (h, hd)) if config.qkv_bias else None)
        stacked_linear(p + ("kv",), f"{key}.kv", depth, (2 * d, d), (d, 2, h, hd),
                       lambda a: a.T.reshape(d, 2, h, hd),
                       (p + ("kv_bias",), (2, h, hd)) if config.qkv_bias else None)
        stacked_linear(p + ("proj",), f"{key}.proj", depth, (d, d), (h, hd, d),
                       lambda a: a.T.reshape(h, hd, d),
                       (p + ("proj_bias",), (d,)) if config.proj_bias else None)

    def mlp(side, key, depth):
        p = (side, "mlp")
        mb = config.mlp_bias
        stacked_linear(p + ("fc1",), f"{key}.fc1", depth, (hidden, d), (d, hidden), _t,
                       (p + ("fc1_bias",), (hidden,)) if mb else None)
        stacked_linear(p + ("fc2",), f"{key}.fc2", depth, (d, hidden), (hidden, d), _t,
                       (p + ("fc2_bias",), (d,)) if mb else None)
        if config.mlp == "swiglu":
            stacked_linear(p + ("fc3",), f"{key}.fc3", depth, (hidden, d), (d, hidden), _t,
                           (p + ("fc3_bias",), (hidden,)) if mb else None)

    le, ld = config.encoder_depth, config.decoder_depth
    norm(("encoder", "norm1"), "encoder.{i}.norm1", le)
    attention("encoder", "attn", "encoder.{i}.attn", le)
    norm(("encoder", "norm2"), "encoder.{i}.norm2", le)
    mlp("encoder", "encoder.{i}.mlp", le)
    norm(("encoder_norm",), "encoder_norm")
    add(("context_proj",), (d, d), [Piece("decoder_proj_context.weight", (d, d), (), _t)])
    add(("context_bias",), (d,), [Piece("decoder_proj_context.bias", (d,), ())])
    norm(("decoder", "norm1"), "decoder.{i}.norm1", ld)
    attention("decoder", "self_attn", "decoder.{i}.self_attn", ld)
    norm(("decoder", "query_norm"), "decoder.{i}.query_norm", ld)
    norm(("decoder", "context_norm"), "decoder.{i}.context_norm", ld)
    cross_attention("decoder.{i}.cross_attn", ld)
    norm(("decoder", "norm2"), "decoder.{i}.norm2", ld)
    mlp("decoder", "decoder.{i}.mlp", ld)
    norm(("decoder_norm",), "decoder_norm")
    add(("dec_embed", "mask_token"), (d,),
        [Piece("mask_token", (1, 1, d), (), lambda a: a.reshape(d))])

    # -- modality embeddings -----------------------------------------------------------------------
    specs = config.modalities
    m = len(specs)
    row = lambda a: a.reshape(d)
    enc_key = lambda s, f: f"encoder_embeddings.{s.name}.{f}"
    dec_key = lambda s, f: f"decoder_embeddings.{s.name}.{f}"
    if config.share_modality_embeddings:
        pieces = []
        for i, s in enumerate(specs):
            if s.input:
                pieces.append(Piece(enc_key(s, "mod_emb"), (1, 1, d), (i,), row))
                if s.target:
                    checks.append(Check(dec_key(s, "mod_emb"), (1, 1, d), "equal",
                                        enc_key(s, "mod_emb"),
                                        "share_modality_embeddings is true; convert with "
                                        "share_modality_embeddings=False to keep both"))
            else:
                pieces.append(Piece(dec_key(s, "mod_emb"), (1, 1, d), (i,), row))
        add(("mod_emb",), (m, d), pieces)
    else:
        add(("enc_mod_emb",), (m, d), [Piece(enc_key(s, "mod_emb"), (1, 1, d), (i,), row)
                                       for i, s in enumerate(specs) if s.input])
        add(("dec_mod_emb",), (m, d), [Piece(dec_key(s, "mod_emb"), (1, 1, d), (i,), row)
                                       for i, s in enumerate(specs) if s.target])

    # -- token tables ----------------------------------------------------------------------------
    def vocab_rows(i):
        start, stop = vocab.range(i)
        return (slice(start, stop),)

    enc_tokens = [Piece(enc_key(s, "token_emb.weight"), (s.vocab_size, d), vocab_rows(i))
                  for i, s in enumerate(specs) if s.input and s.is_token]
    if vocab.size:
        add(("enc_embed", "token_emb"), (vocab.size, d), enc_tokens)
    add(("dec_embed", "token_emb"), (vocab.size, d),
        [Piece(dec_key(s, "token_emb.weight"), (s.vocab_size, d), vocab_rows(i))
         for i, s in enumerate(specs) if s.target])
    if not tied:
        add(("dec_embed", "to_logits"), (vocab.size, d),
            [Piece(dec_key(s, "to_logits.weight"), (s.vocab_size, d), vocab_rows(i))
             for i, s in enumerate(specs) if s.target])
    else:
        checks.extend(Check(dec_key(s, "to_logits.weight"), (s.vocab_size, d), "equal",
                            dec_key(s, "token_emb.weight"),
                            "tie_logits is true; convert with tie_logits=False to keep both")
                      for s in specs if s.target)

    # -- position tables (layout read from the model) and continuous projections -------------------
    for side, key_of in (("enc_embed", enc_key), ("dec_embed", dec_key)):
        tables = getattr(model_abstract, side).positions
        fixed, learned = [], []
        for s, entry in zip(specs, tables.layout):
            if entry is None:
                continue
            kind, off, rows = entry
            piece = Piece(key_of(s, "pos_emb"), (1, rows, d), (slice(off, off + rows),),
                          lambda a, r=rows: a.reshape(r, d))
            (fixed if kind == "fixed" else learned).append(piece)
            if kind == "fixed":
                checks.append(Check(piece.key, piece.shape, "table",
                                    expected=sincos_table(s, d)[None],
                                    hint="the sin-cos table m4 computes for this modality"))
        if fixed:
            add((side, "positions", "fixed"), (sum(p.shape[1] for p in fixed), d), fixed)
        if learned:
            add((side, "positions", "learned"), (sum(p.shape[1] for p in learned), d), learned)
    for k, i in enumerate(model_abstract.enc_embed.continuous):
        s = specs[i]
        if s.kind == "pixels":
            add(("enc_embed", "proj", k, "kernel"), (s.patch_dim, d),
                [Piece(enc_key(s, "proj.weight"), (d, s.patch_dim), (), _t)])
        else:
            add(("enc_embed", "proj", k, "kernel"), (s.patch_dim, d),
                [Piece(enc_key(s, "emb_proj.weight"), (d, s.patch_dim), (), _t)])
            add(("enc_embed", "proj", k, "bias"), (d,),
                [Piece(enc_key(s, "emb_proj.bias"), (d,), ())])
    return recipes, checks


def _intersect(dest: tuple, region: tuple, shape: tuple):
    """Where piece `dest` (ints/slices over `shape`) meets `region` (slices): the source slice
    (inside the piece) and the target slice (inside the region), or None."""
    src, dst = [], []
    piece_axis = 0
    for axis, size in enumerate(shape):
        r = region[axis] if axis < len(region) else slice(None)
        r0, r1, _ = r.indices(size)
        if axis < len(dest) and isinstance(dest[axis], int):
            i = dest[axis]
            if not r0 <= i < r1:
                return None
            dst.append(i - r0)       # integer index: drops the axis of the region
            continue
        if axis < len(dest):
            d0, d1, _ = dest[axis].indices(size)
        else:
            d0, d1 = 0, size
        lo, hi = max(d0, r0), min(d1, r1)
        if lo >= hi:
            return None
        src.append(slice(lo - d0, hi - d0))
        dst.append(slice(lo - r0, hi - r0))
        piece_axis += 1
    return tuple(src), tuple(dst)


def validate_keys(reader: SafetensorsReader, recipes: dict, checks: list[Check]) -> None:
    """Missing keys, shape mismatches and unexpected keys, each listed by name."""
    expected = {p.key: p.shape for r in recipes.values() for p in r.pieces}
    optional = {c.key: c.shape for c in checks}
    missing = sorted(k for k in expected if k not in reader.shapes)
    if missing:
        raise ConversionError(f"{reader.path}: missing keys ({len(missing)}): {missing[:20]}"
                              + (" ..." if len(missing) > 20 else ""))
    wrong = [f"{k}: expected {list(s)}, got {list(reader.shapes[k])}"
             for k, s in {**expected, **optional}.items()
             if k in reader.shapes and reader.shapes[k] != tuple(s)]
    if wrong:
        raise ConversionError(f"{reader.path}: shape mismatches ({len(wrong)}): "
                              + "; ".join(wrong[:20]))
    unexpected = sorted(set(reader.shapes) - set(expected) - set(optional))
    if unexpected:
        raise ConversionError(f"{reader.path}: unexpected keys ({len(unexpected)}): "
                              f"{unexpected[:20]}" + (" ..." if len(unexpected) > 20 else ""))


def run_checks(reader: SafetensorsReader, checks: list[Check]) -> None:
    for c in checks:
        if c.key not in reader.shapes:
            continue
        value = reader.get(c.key)
        if c.kind == "zero" and np.any(value != 0):
            raise ConversionError(f"{c.key}: expected all zeros ({c.hint}), found max |x| = "
                                  f"{np.abs(value).max():.3g}")
        if c.kind == "table":
            diff = float(np.abs(value - c.expected).max())
            if diff > SINCOS_TOLERANCE:
                raise ConversionError(f"{c.key}: differs from {c.hint} by {diff:.3g} (more than "
                                      f"float32 rounding): positions m4 cannot reproduce")
        if c.kind == "equal" and c.other in reader.shapes:
            other = reader.get(c.other)
            if not np.array_equal(value, other):
                raise ConversionError(f"{c.key} differs from {c.other} (max diff "
                                      f"{np.abs(value - other).max():.3g}): {c.hint}")


def build_array(reader: SafetensorsReader, recipe: Recipe, sharding) -> jax.Array:
    """One m4 variable, each shard filled from the reference tensors that overlap it.

    Sources are read per shard and dropped right away (a shard never holds more than its own
    region plus one source tensor); re-reads for other shards come from the page cache."""

    def fill(index):
        index = tuple(index) + (slice(None),) * (len(recipe.shape) - len(index))
        region_shape = tuple(len(range(*s.indices(n))) for s, n in zip(index, recipe.shape))
        out = np.zeros(region_shape, np.float32)
        for piece in recipe.pieces:
            hit = _intersect(piece.dest, index, recipe.shape)
            if hit is not None:
                src, dst = hit
                out[dst] = piece.transform(reader.get(piece.key))[src]
        return out

    return jax.make_array_from_callback(recipe.shape, sharding, fill)


def load_state(reader: SafetensorsReader, model_abstract, config: FourMConfig, shardings, *,
               tied: bool, progress=None):
    """The m4 state (nnx.State with arrays) of `model_abstract` from the reference file."""
    recipes, checks = build_recipes(model_abstract, config, tied=tied)
    validate_keys(reader, recipes, checks)
    run_checks(reader, checks)
    state = nnx.state(model_abstract)
    flat = dict(nnx.to_flat_state(state))
    flat_shardings = dict(nnx.to_flat_state(shardings))
    unknown = sorted(set(flat) - set(recipes), key=str)
    if unknown:
        raise ConversionError(f"internal: no recipe for m4 variables {unknown}")
    for path, variable in flat.items():
        recipe = recipes[path]
        if tuple(variable.shape) != recipe.shape:
            raise ConversionError(f"internal: {path} has shape {variable.shape}, recipe "
                                  f"{recipe.shape}")
        sharding = flat_shardings[path]
        sharding = sharding.get_value() if isinstance(sharding, nnx.Variable) else sharding
        variable.set_value(build_array(reader, recipe, sharding))
        if progress is not None:
            progress.update(int(np.prod(recipe.shape)))
    return state
