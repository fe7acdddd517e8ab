"""Reference (apple/ml-4m `FM`) config -> m4 `FourMConfig`, and the reference state-dict layout.

The reference config is the `config.json` of a Hugging Face 4M checkpoint, or the same dict kept
in the safetensors `__metadata__` as strings (which the reference parses with yaml.safe_load).
"""

from __future__ import annotations

import ast
import json
import pathlib
from typing import Any

from m4.convert.errors import ConversionError
from m4.convert.ml4m_modalities import REFERENCE_MODALITIES, reference_spec
from m4.convert.safetensors_io import SafetensorsReader
from m4.model.configs import FourMConfig


# Keys of FM(config) that m4 reads. Training-only knobs are accepted and ignored.
_MODEL_KEYS = {"domains_in", "domains_out", "encoder_depth", "decoder_depth", "dim", "num_heads",
               "mlp_ratio", "qkv_bias", "proj_bias", "mlp_bias", "norm_bias", "act_layer",
               "gated_mlp", "image_size", "patch_size", "share_modality_embeddings"}
_IGNORED_KEYS = {"drop_path_rate_encoder", "drop_path_rate_decoder", "shared_drop_path",
                 "use_act_checkpoint"}
# Options of FourM whose non-default values m4 does not implement.
_UNSUPPORTED_IF = {"qk_norm": (False,), "decoder_causal_mask": (False,),
                   "decoder_sep_mask": (True,), "num_register_tokens": (0,)}
_REQUIRED = ("domains_in", "domains_out", "encoder_depth", "decoder_depth", "dim", "num_heads")


def _parse_value(text: str) -> Any:
    try:
        import yaml   # what the reference's load_safetensors uses
        return yaml.safe_load(text)
    except ImportError:
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text


def read_reference_config(checkpoint: str | pathlib.Path,
                          config: str | pathlib.Path | dict | None = None) -> dict[str, Any]:
    """The reference config: `config` (a config.json path or a dict) or the safetensors
    metadata of `checkpoint`."""
    if isinstance(config, dict):
        return dict(config)
    if config is not None:
        path = pathlib.Path(config)
        if not path.is_file():
            raise ConversionError(f"--config: file not found: {path}")
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConversionError(f"--config {path}: not valid JSON ({e})") from None
    reader = SafetensorsReader(checkpoint)
    metadata = reader.metadata
    reader.close()
    if not metadata:
        raise ConversionError(f"{checkpoint}: the safetensors file has no config in its metadata; "
                              f"pass the checkpoint's config.json (--config)")
    return {k: _parse_value(v) for k, v in metadata.items()}


def _mlp_kind(cfg: dict) -> str:
    act, gated = cfg.get("act_layer", "GELU"), bool(cfg.get("gated_mlp", False))
    if act == "SiLU" and gated:
        return "swiglu"
    if act == "GELU" and not gated:
        return "gelu"
    raise ConversionError(f"config: act_layer={act!r} with gated_mlp={gated} is not supported "
                          f"(m4 has SiLU+gated (SwiGLU) and GELU+not gated)")


def model_config(cfg: dict, *, pos_rows: dict[str, tuple[int | None, int | None]] | None = None,
                 tie_logits: bool = False, share_modality_embeddings: bool | None = None,
                 **overrides) -> FourMConfig:
    """FourMConfig of a reference config.

    pos_rows: {modality: (encoder rows, decoder rows)} of the checkpoint's position tables,
    used for sequence tables (512 rows in the released checkpoints) and learned tables.
    """
    missing = [k for k in _REQUIRED if k not in cfg]
    if missing:
        raise ConversionError(f"config: missing fields {missing}")
    unknown = sorted(set(cfg) - _MODEL_KEYS - _IGNORED_KEYS - set(_UNSUPPORTED_IF))
    if unknown:
        raise ConversionError(f"config: unknown fields {unknown} (known: {sorted(_MODEL_KEYS)})")
    for key, ok in _UNSUPPORTED_IF.items():
        if key in cfg and cfg[key] not in ok:
            raise ConversionError(f"config: {key}={cfg[key]!r} is not supported by m4 "
                                  f"(supported: {ok[0]!r})")
    domains_in, domains_out = list(cfg["domains_in"]), list(cfg["domains_out"])
    names = list(dict.fromkeys(domains_in + domains_out))
    unknown_mods = [n for n in names if n not in REFERENCE_MODALITIES]
    if unknown_mods:
        raise ConversionError(f"config: modalities {unknown_mods} cannot be represented in m4 "
                              f"(known: {sorted(REFERENCE_MODALITIES)})")
    pos_rows = pos_rows or {}
    specs = []
    for name in names:
        enc_rows, dec_rows = pos_rows.get(name, (None, None))
        if enc_rows and dec_rows and enc_rows != dec_rows:
            raise ConversionError(f"{name}: encoder and decoder position tables differ in size "
                                  f"({enc_rows} vs {dec_rows} rows)")
        rows = enc_rows or dec_rows
        spec = reference_spec(name, is_input=name in domains_in, is_target=name in domains_out,
                              image_size=int(cfg.get("image_size", 224)),
                              patch_size=int(cfg.get("patch_size", 16)),
                              pos_rows=rows if REFERENCE_MODALITIES[name].kind in
                              ("sequence", "embeddings") else None)
        if rows is not None and spec.positions == "learned" and rows != spec.length:
            raise ConversionError(f"{name}: learned position table has {rows} rows, expected "
                                  f"{spec.length}")
        specs.append(spec)
    shared = cfg.get("share_modality_embeddings", True)
    if share_modality_embeddings is not None:
        shared = share_modality_embeddings
    fields = dict(
        dim=int(cfg["dim"]), encoder_depth=int(cfg["encoder_depth"]),
        decoder_depth=int(cfg["decoder_depth"]), num_heads=int(cfg["num_heads"]),
        mlp_ratio=float(cfg.get("mlp_ratio", 4.0)), mlp=_mlp_kind(cfg),
        qkv_bias=bool(cfg.get("qkv_bias", True)), proj_bias=bool(cfg.get("proj_bias", True)),
        mlp_bias=bool(cfg.get("mlp_bias", True)), norm_bias=bool(cfg.get("norm_bias", False)),
        norm_eps=1e-6, share_modality_embeddings=bool(shared), tie_logits=tie_logits)
    fields.update(overrides)
    return FourMConfig(modalities=tuple(specs), **fields)


def reference_state_shapes(config: FourMConfig, *, norm_bias_buffers: bool = True,
                           tied: bool | None = None) -> dict[str, tuple[int, ...]]:
    """Every state-dict key of the reference `FM` for `config`, with its shape.

    norm_bias_buffers: include the zero LayerNorm-bias buffers of bias-free norms (the reference
    state dict has them). tied: omit `to_logits` (default: config.tie_logits).
    """
    tied = config.tie_logits if tied is None else tied
    d, hidden = config.dim, config.mlp_hidden
    shapes: dict[str, tuple[int, ...]] = {"mask_token": (1, 1, d)}

    def norm(prefix):
        shapes[f"{prefix}.weight"] = (d,)
        if config.norm_bias or norm_bias_buffers:
            shapes[f"{prefix}.bias"] = (d,)

    def linear(prefix, out_f, in_f, bias):
        shapes[f"{prefix}.weight"] = (out_f, in_f)
        if bias:
            shapes[f"{prefix}.bias"] = (out_f,)

    def mlp(prefix):
        linear(f"{prefix}.fc1", hidden, d, config.mlp_bias)
        linear(f"{prefix}.fc2", d, hidden, config.mlp_bias)
        if config.mlp == "swiglu":
            linear(f"{prefix}.fc3", hidden, d, config.mlp_bias)

    for s in config.modalities:
        pos = (1, s.length if s.kind in ("image", "pixels", "vectors") else s.num_positions, d)
        if s.input:
            p = f"encoder_embeddings.{s.name}"
            shapes[f"{p}.mod_emb"] = (1, 1, d)
            shapes[f"{p}.pos_emb"] = pos
            if s.kind == "pixels":
                shapes[f"{p}.proj.weight"] = (d, s.patch_dim)
            elif s.kind == "embeddings":
                linear(f"{p}.emb_proj", d, s.patch_dim, True)
            else:
                shapes[f"{p}.token_emb.weight"] = (s.vocab_size, d)
        if s.target:
            p = f"decoder_embeddings.{s.name}"
            shapes[f"{p}.mod_emb"] = (1, 1, d)
            shapes[f"{p}.pos_emb"] = pos
            shapes[f"{p}.token_emb.weight"] = (s.vocab_size, d)
            if not tied:
                shapes[f"{p}.to_logits.weight"] = (s.vocab_size, d)
    for i in range(config.encoder_depth):
        p = f"encoder.{i}"
        norm(f"{p}.norm1")
        linear(f"{p}.attn.qkv", 3 * d, d, config.qkv_bias)
        linear(f"{p}.attn.proj", d, d, config.proj_bias)
        norm(f"{p}.norm2")
        mlp(f"{p}.mlp")
    norm("encoder_norm")
    linear("decoder_proj_context", d, d, True)
    for i in range(config.decoder_depth):
        p = f"decoder.{i}"
        norm(f"{p}.norm1")
        linear(f"{p}.self_attn.qkv", 3 * d, d, config.qkv_bias)
        linear(f"{p}.self_attn.proj", d, d, config.proj_bias)
        linear(f"{p}.cross_attn.q", d, d, config.qkv_bias)
        linear(f"{p}.cross_attn.kv", 2 * d, d, config.qkv_bias)
        linear(f"{p}.cross_attn.proj", d, d, config.proj_bias)
        norm(f"{p}.query_norm")
        norm(f"{p}.context_norm")
        norm(f"{p}.norm2")
        mlp(f"{p}.mlp")
    norm("decoder_norm")
    return shapes


def reference_config_dict(config: FourMConfig, image_size: int = 224,
                          patch_size: int = 16) -> dict[str, Any]:
    """The reference config.json of an m4 config built from reference modalities."""
    return {
        "act_layer": "SiLU" if config.mlp == "swiglu" else "GELU",
        "decoder_depth": config.decoder_depth, "dim": config.dim,
        "domains_in": [s.name for s in config.modalities if s.input],
        "domains_out": [s.name for s in config.modalities if s.target],
        "encoder_depth": config.encoder_depth, "gated_mlp": config.mlp == "swiglu",
        "image_size": image_size, "mlp_bias": config.mlp_bias, "mlp_ratio": config.mlp_ratio,
        "norm_bias": config.norm_bias, "num_heads": config.num_heads,
        "patch_size": patch_size, "proj_bias": config.proj_bias, "qkv_bias": config.qkv_bias,
        "share_modality_embeddings": config.share_modality_embeddings,
    }
