"""Import apple/ml-4m (4M-7 / 4M-21) checkpoints into m4.

    model, config = m4.convert.ml4m.load("model.safetensors")            # config from metadata
    model, config = m4.convert.ml4m.load("model.safetensors", "config.json", mesh=mesh)
    m4.convert.ml4m.convert("model.safetensors", out_dir="converted/")   # m4 model directory
    model, config = m4.convert.ml4m.load_converted("converted/")
    batch, origin = m4.convert.ml4m.mod_dict_to_batch(mod_dict, config)  # reference inputs

Options: shared or separate modality embeddings (config's `share_modality_embeddings`, default
the reference default True), tied or untied logits (tied when the file has no `to_logits`),
zero LayerNorm-bias buffers present or absent, learned positions for the global-token modalities,
and sequence position tables of any size (512 rows in the released checkpoints).
"""

from __future__ import annotations

import json
import pathlib

import jax
import numpy as np
from flax import nnx

from m4.convert.ml4m_batch import SlotOrigin, mod_dict_to_batch
from m4.convert.ml4m_config import (
    ConversionError, model_config, read_reference_config, reference_config_dict,
    reference_state_shapes,
)
from m4.convert.ml4m_modalities import REFERENCE_MODALITIES, UnsupportedModality, reference_spec
from m4.convert.ml4m_weights import SafetensorsReader, load_state
from m4.model import FourM, FourMConfig
from m4.parallel import LOGICAL_RULES, make_mesh, state_shardings

__all__ = [
    "ConversionError", "REFERENCE_MODALITIES", "SlotOrigin", "UnsupportedModality", "convert",
    "load", "load_converted", "mod_dict_to_batch", "model_config", "read_reference_config",
    "reference_config_dict", "reference_spec", "reference_state_shapes", "save_converted",
]

MODALITIES_FILE = "modalities.json"


def _position_rows(reader: SafetensorsReader) -> dict[str, tuple[int | None, int | None]]:
    rows: dict[str, list] = {}
    for key, shape in reader.shapes.items():
        for side, prefix in ((0, "encoder_embeddings."), (1, "decoder_embeddings.")):
            if key.startswith(prefix) and key.endswith(".pos_emb") and len(shape) == 3:
                name = key[len(prefix):-len(".pos_emb")]
                rows.setdefault(name, [None, None])[side] = shape[1]
    return {k: tuple(v) for k, v in rows.items()}


def _default_mesh():
    return make_mesh(1, 1, 1, devices=jax.devices()[:1])


def load(checkpoint, config=None, *, mesh=None, rules=LOGICAL_RULES,
         share_modality_embeddings: bool | None = None, tie_logits: bool | None = None,
         progress: bool = False, **model_overrides) -> tuple[FourM, FourMConfig]:
    """An m4 FourM with the weights of a reference safetensors checkpoint, placed on `mesh`
    (default: the first device) by the logical axis rules.

    config: the reference config.json (path or dict); default: the file's metadata.
    share_modality_embeddings / tie_logits: None = as the checkpoint says (config field / whether
    `to_logits` keys exist); forcing True checks that the two copies are equal.
    model_overrides: m4-only FourMConfig fields (dtype, scan_layers, remat, logits, ...).
    """
    checkpoint = pathlib.Path(checkpoint)
    if not checkpoint.is_file():
        raise ConversionError(f"--checkpoint: file not found: {checkpoint}")
    ref_cfg = read_reference_config(checkpoint, config)
    reader = SafetensorsReader(checkpoint)
    has_logits = any(k.endswith(".to_logits.weight") for k in reader.shapes)
    tied = (not has_logits) if tie_logits is None else bool(tie_logits)
    m4_config = model_config(ref_cfg, pos_rows=_position_rows(reader), tie_logits=tied,
                             share_modality_embeddings=share_modality_embeddings,
                             **model_overrides)
    abstract = nnx.eval_shape(lambda: FourM(m4_config, rngs=nnx.Rngs(0)))
    graphdef, abstract_state = nnx.split(abstract)
    shardings = state_shardings(abstract_state, mesh or _default_mesh(), rules)
    bar = None
    if progress:
        from tqdm import tqdm
        total = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract_state))
        bar = tqdm(total=total, unit="param", unit_scale=True, desc="convert")
    try:
        state = load_state(reader, abstract, m4_config, shardings, tied=tied, progress=bar)
    finally:
        if bar is not None:
            bar.close()
    return nnx.merge(graphdef, state), m4_config


def save_converted(model: FourM, out_dir, *, source: dict | None = None) -> pathlib.Path:
    """Writes the model in the m4 model layout (`m4.train.model_io`: model_config.json +
    checkpoints/0/state, loadable with `model_io.load_model`), plus modalities.json and, with
    `source`, conversion.json.

    Written synchronously, at most ~1 GB of arrays in flight and uncompressed: the default
    (async, compressed) orbax save holds a copy of the state plus compression buffers, ~1.5-2x
    the model at peak; this keeps the peak at the model's size (float weights barely compress).
    """
    import orbax.checkpoint as ocp

    from m4.train.model_io import MODEL_CONFIG_FILE

    out = pathlib.Path(out_dir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    config: FourMConfig = model.config
    (out / MODEL_CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=1))
    (out / MODALITIES_FILE).write_text(json.dumps([s.to_dict() for s in config.modalities],
                                                  indent=1))
    if source is not None:
        (out / "conversion.json").write_text(json.dumps(source, indent=1))
    handler = ocp.PyTreeCheckpointHandler(save_concurrent_gb=1, save_device_host_concurrent_gb=1,
                                          use_compression=False)
    options = ocp.CheckpointManagerOptions(max_to_keep=None, enable_async_checkpointing=False)
    with ocp.CheckpointManager(out / "checkpoints", options=options,
                               item_handlers={"state": handler,
                                              "extra": ocp.JsonCheckpointHandler()}) as manager:
        manager.save(0, args=ocp.args.Composite(
            state=ocp.args.PyTreeSave({"params": nnx.state(model, nnx.Param)}),
            extra=ocp.args.JsonSave(dict(source or {}))), force=True)
    return out


def load_converted(out_dir, *, mesh=None) -> tuple[FourM, FourMConfig]:
    """The model written by `save_converted` / `m4 convert ml4m --out` (or any m4 model
    directory), with its fixed position tables rebuilt from the config."""
    from m4.train.model_io import load_model

    model = load_model(out_dir, mesh=mesh)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    if any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(rest)):
        config = model.config
        rest = jax.jit(lambda: nnx.split(FourM(config, rngs=nnx.Rngs(0)), nnx.Param, ...)[2])()
        model = nnx.merge(graphdef, params, rest)
    return model, model.config


def convert(checkpoint, config=None, out_dir=None, *, mesh=None, progress: bool = True,
            **options) -> tuple[FourM, FourMConfig]:
    """`load` and, with `out_dir`, `save_converted`."""
    model, m4_config = load(checkpoint, config, mesh=mesh, progress=progress, **options)
    if out_dir is not None:
        save_converted(model, out_dir, source={"checkpoint": str(checkpoint),
                                               "config": str(config) if config else "metadata",
                                               "tie_logits": m4_config.tie_logits,
                                               "share_modality_embeddings":
                                                   m4_config.share_modality_embeddings})
    return model, m4_config
