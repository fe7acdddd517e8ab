"""`m4 pretokenize`: raw samples -> aligned crops -> tokens -> ArrayRecord token shards.

    m4 pretokenize --data scenes --n 5000 --tokenizers runs/demo/tokenizers --out runs/demo/tokens/train
    m4 pretokenize --data tfds:DATA_DIR[:CONFIG] --split validation --tokenizers ... --out ...
    m4 pretokenize --data folder:ROOT --tokenizers ... --out ...

Record (one per sample): {"id", "index", "caption": str, "crops": float [K, 5],
"tokens": {modality: int [K, *token_shape] (image: [K, h*w] row-major; poses: [K, F*t]),
"caption": list of K int32 arrays (ids without [EOS]/[PAD]), and with `--pixel-inputs rgb`
"rgb_pixels": uint8 [K, L, p*p*3] patches}}.

Parallel and resumable: the samples are cut into `--shards` contiguous shards; process p of P
(`jax.distributed`, or `--process-index/--process-count` for plain worker processes) writes
shards p, p+P, ...; a finished shard is never rewritten, an interrupted one is written again
from its start (a shard is only renamed into place once complete, see m4.data.shards).
The manifest records each modality's ModalitySpec (what the model is built from), its tokenizer
content hash, the text sentinels, crops and the source; training refuses shards whose manifest
does not match the tokenizers it is given.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from m4.data import augment, scenes, shards
from m4.data.span_masking import SentinelSpec
from m4.modalities import ModalitySpec
from m4.model.adapters import patchify

MANIFEST_FORMAT = "m4-token-shards/1"


class PretokenizeError(ValueError):
    pass


# ----------------------------------------------------------------------------- tokenizers
def find_tokenizers(directory: str | os.PathLike,
                    modalities: Sequence[str] | None = None) -> dict[str, Any]:
    """Every tokenizer artifact under `directory` (one sub-directory each), keyed by modality."""
    from m4 import tokenizers as tok_lib

    directory = pathlib.Path(directory)
    if not directory.is_dir():
        raise PretokenizeError(f"--tokenizers: {str(directory)!r} is not a directory")
    found = {}
    for sub in sorted(p for p in directory.iterdir() if p.is_dir()):
        if (sub / "spec.json").exists() or (sub / "tokenizer" / "spec.json").exists():
            tok = tok_lib.load(sub)
            if tok.modality in found:
                raise PretokenizeError(f"--tokenizers: two artifacts for {tok.modality!r}: "
                                       f"{found[tok.modality].path} and {sub}")
            found[tok.modality] = tok
    if modalities:
        missing = [m for m in modalities if m not in found]
        if missing:
            raise PretokenizeError(f"--tokenizers {directory}: no tokenizer for {missing} "
                                   f"(found {sorted(found)})")
        found = {m: found[m] for m in modalities}
    if not found:
        raise PretokenizeError(f"--tokenizers: no tokenizer artifacts in {str(directory)!r}")
    return found


def modality_spec(tokenizer) -> ModalitySpec:
    """The model-side description of a tokenizer's tokens."""
    spec = tokenizer.spec
    shape = tuple(spec.token_shape)
    if spec.kind == "image":
        return ModalitySpec(spec.modality, "image", vocab_size=spec.vocab_size, grid=shape,
                            tokenizer=spec.content_hash)
    if spec.kind == "poses":
        return ModalitySpec(spec.modality, "vectors", vocab_size=spec.vocab_size,
                            length=int(np.prod(shape)), positions="learned",
                            tokenizer=spec.content_hash)
    if spec.kind == "text":
        return ModalitySpec(spec.modality, "sequence", vocab_size=tokenizer.vocab_size,
                            length=shape[0], tokenizer=spec.content_hash)
    raise PretokenizeError(f"tokenizer {spec.modality!r}: unknown kind {spec.kind!r}")


PIXELS_SUFFIX = "_pixels"


def pixel_spec(tokenizer) -> ModalitySpec:
    """The pixel-patch input beside an image tokenizer's tokens (the reference's `rgb@224` beside
    `tok_rgb@224`): one patch per token position, so both share the grid and its positions."""
    spec = tokenizer.spec
    if spec.kind != "image":
        raise PretokenizeError(f"--pixel-inputs {spec.modality}: pixel patches need an image "
                               f"tokenizer, {spec.modality!r} is {spec.kind!r}")
    raw = tuple(int(d) for d in spec.shape)
    grid = tuple(int(g) for g in spec.token_shape)
    if len(raw) != 3 or raw[0] % grid[0] or raw[1] % grid[1] or raw[0] // grid[0] != raw[1] // grid[1]:
        raise PretokenizeError(f"--pixel-inputs {spec.modality}: raw shape {list(raw)} does not "
                               f"split into square patches over the token grid {list(grid)}")
    patch = raw[0] // grid[0]
    return ModalitySpec(spec.modality + PIXELS_SUFFIX, "pixels", grid=grid, patch_size=patch,
                        patch_dim=patch * patch * raw[2], source=spec.modality, target=False,
                        tokenizer=spec.content_hash)


def tokenizer_resolution(tokenizers: dict[str, Any]) -> int:
    """The image resolution every (non-text) tokenizer was trained for; they must agree."""
    found = {m: t.spec.resolution for m, t in tokenizers.items() if t.spec.kind != "text"}
    if len(set(found.values())) > 1:
        raise PretokenizeError(f"tokenizers disagree on the image resolution: {found}")
    return next(iter(found.values()), 64)


def text_sentinels(tokenizer) -> SentinelSpec:
    ids = tokenizer.special_ids
    # Masking starts at [S_1]; [S_0] is reserved as in the reference layout.
    return SentinelSpec(pad_id=ids["pad"], eos_id=ids["eos"],
                        first_sentinel_id=ids["sentinel_start"] + 1,
                        num_sentinels=ids["num_sentinels"] - 1)


def expected_manifest(tokenizers: dict[str, Any], pixel_inputs: Sequence[str] = ()) -> dict:
    """What shards made with these tokenizers must declare (checked by training)."""
    out = {"modalities": {}}
    for name, tok in tokenizers.items():
        out["modalities"][name] = {"spec": modality_spec(tok).to_dict(),
                                   "tokenizer_hash": tok.spec.content_hash}
    for name in pixel_inputs:
        if name not in tokenizers:
            raise PretokenizeError(f"--pixel-inputs {name}: no tokenizer for {name!r} (have "
                                   f"{sorted(tokenizers)}); the patches share its token grid")
        spec = pixel_spec(tokenizers[name])
        out["modalities"][spec.name] = {"spec": spec.to_dict(),
                                        "tokenizer_hash": tokenizers[name].spec.content_hash}
    return out


# --------------------------------------------------------------------------------- sources
@dataclasses.dataclass
class Source:
    samples: Any                     # random access: len() and [i] -> raw sample dict
    description: str
    scene_config: scenes.SceneConfig | None
    index_of: Any                    # i -> a stable integer id of sample i (crop seeding)


def open_source(spec: str, *, split: str = "train", n: int | None = None, seed: int = 0,
                resolution: int = 64) -> Source:
    if spec == "scenes":
        if n is None:
            raise PretokenizeError("--data scenes needs --n (how many scenes)")
        cfg = scenes.SceneConfig(resolution=resolution)
        start = scenes.VALIDATION_START if split == "validation" else 0

        class _Scenes:
            def __len__(self):
                return n

            def __getitem__(self, i):
                return scenes.render(seed, start + i, cfg)

        return Source(_Scenes(), f"scenes seed={seed} split={split} n={n}", cfg,
                      lambda i: start + i)
    kind, _, rest = spec.partition(":")
    if kind == "tfds" and rest:
        from m4.data import tfds_scenes

        data_dir, _, config_name = rest.partition(":")
        if not config_name:
            root = pathlib.Path(data_dir) / tfds_scenes.NAME
            names = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
            if len(names) != 1:
                raise PretokenizeError(f"--data {spec}: name the config as tfds:DIR:CONFIG "
                                       f"(found {names or 'none'} under {root})")
            config_name = names[0]
        ds = tfds_scenes.open_split(data_dir, config_name, split)
        if n is not None:
            ds = _Limit(ds, n)
        return Source(ds, f"tfds {data_dir} {config_name} {split}", ds_config(ds), lambda i: i)
    if kind == "folder" and rest:
        from m4.data import folder

        ds = folder.FolderDataset(rest)
        if n is not None:
            ds = _Limit(ds, n)
        return Source(ds, f"folder {rest}", ds_config(ds), lambda i: i)
    raise PretokenizeError(f"--data: expected scenes, tfds:<dir>[:<config>] or folder:<dir>, "
                           f"got {spec!r}")


def ds_config(ds) -> scenes.SceneConfig | None:
    inner = getattr(ds, "base", ds)
    return getattr(inner, "scene_config", None) or getattr(inner, "config", None)


class _Limit:
    def __init__(self, base, n: int):
        if n > len(base):
            raise PretokenizeError(f"--n {n}: the source holds only {len(base)} samples")
        self.base, self.n = base, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.base[i]


# ------------------------------------------------------------------------------ the work
def shard_ranges(num_samples: int, num_shards: int) -> list[range]:
    bounds = np.linspace(0, num_samples, num_shards + 1).round().astype(int)
    return [range(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def _tokenize_chunk(samples: list[dict], indices: list[int], tokenizers: dict, crops: int,
                    seed: int, scene_cfg: scenes.SceneConfig | None, flip_prob: float,
                    pixel_inputs: Sequence[str] = ()) -> list[dict]:
    image_names = [m for m, t in tokenizers.items() if t.spec.kind != "text"]
    resolution = samples[0]["rgb"].shape[0] if "rgb" in samples[0] else \
        next(t.spec.resolution for t in tokenizers.values())
    settings = [augment.crop_settings(seed, idx, resolution, crops, flip_prob=flip_prob)
                for idx in indices]
    feature_args = {}
    if scene_cfg is not None:
        feature_args = dict(feature_patch=scene_cfg.feature_patch,
                            feature_orientations=scene_cfg.feature_orientations)
    cropped = [[augment.apply_crop(s, row, **feature_args) for row in rows]
               for s, rows in zip(samples, settings)]                  # [B][K]
    records = [{"id": str(s.get("id", idx)), "index": int(idx), "caption": s.get("caption"),
                "crops": rows.astype(np.float32), "tokens": {}}
               for s, idx, rows in zip(samples, indices, settings)]
    for name in image_names:
        missing = [idx for s, idx in zip(samples, indices) if name not in s]
        if missing:
            raise PretokenizeError(f"sample {missing[0]} has no {name!r} (tokenizers were given "
                                   f"for {sorted(tokenizers)})")
        batch = np.stack([c[name] for row in cropped for c in row])   # [B*K, ...]
        tokens = tokenizers[name].encode(batch)
        tokens = tokens.reshape(len(samples), crops, -1)
        dtype = np.int16 if tokenizers[name].spec.vocab_size <= np.iinfo(np.int16).max else np.int32
        for r, t in zip(records, tokens):
            r["tokens"][name] = t.astype(dtype)
        if name in pixel_inputs:
            # uint8 patches [K, L, p*p*C], normalised when masked (m4.data.pixels).
            spec = pixel_spec(tokenizers[name])
            if batch.dtype != np.uint8:
                raise PretokenizeError(f"--pixel-inputs {name}: expected uint8 images, got "
                                       f"{batch.dtype}")
            patches = patchify(batch, spec.patch_size).reshape(len(samples), crops, spec.length,
                                                                spec.patch_dim)
            for r, p in zip(records, patches):
                r["tokens"][spec.name] = np.ascontiguousarray(p)
    for name, tok in tokenizers.items():
        if tok.spec.kind != "text":
            continue
        texts = [s[name] for s in samples]
        ids = tok.encode(texts)                                       # [B, max_len] with EOS
        for r, row in zip(records, ids):
            eos = int(np.argmax(row == tok.special_ids["eos"]))
            r["tokens"][name] = [row[:eos].astype(np.int32)] * crops   # caption is crop-invariant
    return records


def pretokenize(source: Source, tokenizers: dict, out: str | os.PathLike, *, crops: int = 1,
                num_shards: int = 8, seed: int = 0, batch_size: int = 64,
                process_index: int = 0, process_count: int = 1, flip_prob: float = 0.0,
                pixel_inputs: Sequence[str] = (), progress: bool = True) -> dict:
    """Writes this process's shards; returns counts {written, skipped, shards}.

    pixel_inputs: image modalities whose pixel patches are stored too (as `<name>_pixels`, an
    input-only `pixels` modality over the same grid; see `pixel_spec`)."""
    if crops < 1:
        raise PretokenizeError(f"--crops: expected >= 1, got {crops}")
    if num_shards < 1 or num_shards > len(source.samples):
        raise PretokenizeError(f"--shards: expected 1..{len(source.samples)} (the number of "
                               f"samples), got {num_shards}")
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pixel_inputs = tuple(dict.fromkeys(pixel_inputs))
    manifest = expected_manifest(tokenizers, pixel_inputs)
    manifest.update(format=MANIFEST_FORMAT, crops=crops, num_records=len(source.samples),
                    num_shards=num_shards, source=source.description, seed=seed,
                    crop_flip_prob=flip_prob)
    texts = [t for t in tokenizers.values() if t.spec.kind == "text"]
    if texts:
        manifest["text"] = dataclasses.asdict(text_sentinels(texts[0]))
    _check_or_write_manifest(out, manifest, lead=process_index == 0)

    ranges = shard_ranges(len(source.samples), num_shards)
    mine = list(range(process_index, num_shards, process_count))
    todo = [s for s in mine if not (out / shards.shard_name(s, num_shards)).exists()]
    from tqdm.auto import tqdm

    bar = tqdm(total=sum(len(ranges[s]) for s in todo), desc="pretokenize", unit="sample",
               disable=not progress)
    for s in todo:
        with shards.ShardWriter(out / shards.shard_name(s, num_shards)) as writer:
            idxs = list(ranges[s])
            for start in range(0, len(idxs), batch_size):
                part = idxs[start:start + batch_size]
                samples = [source.samples[i] for i in part]
                for record in _tokenize_chunk(samples, [source.index_of(i) for i in part],
                                              tokenizers, crops, seed, source.scene_config,
                                              flip_prob, pixel_inputs):
                    writer.write(record)
                bar.update(len(part))
    bar.close()
    return {"written": len(todo), "skipped": len(mine) - len(todo), "shards": num_shards}


_RUN_FIELDS = ("modalities", "crops", "num_records", "num_shards", "source", "seed", "text",
               "crop_flip_prob", "format")


def _check_or_write_manifest(out: pathlib.Path, manifest: dict, *, lead: bool) -> None:
    path = out / shards.MANIFEST
    if path.exists():
        have = json.loads(path.read_text())
        diff = [k for k in _RUN_FIELDS if json.dumps(have.get(k), sort_keys=True)
                != json.dumps(manifest.get(k), sort_keys=True)]
        if diff:
            raise PretokenizeError(
                f"{out} already holds shards made differently ({', '.join(diff)} differ); "
                f"use another --out, or delete it to start over")
    elif lead:
        shards.write_manifest(out, manifest)


# -------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True,
                        help="scenes | tfds:<data_dir>[:<config>] | folder:<root>")
    parser.add_argument("--tokenizers", required=True, type=pathlib.Path,
                        help="directory with one tokenizer artifact per modality")
    parser.add_argument("--out", required=True, type=pathlib.Path, help="shard directory")
    parser.add_argument("--modalities", nargs="+", default=None,
                        help="only these modalities (default: every tokenizer found)")
    parser.add_argument("--crops", type=int, default=1, help="augmented crops per sample (K)")
    parser.add_argument("--n", type=int, default=None,
                        help="number of samples (required for scenes; a prefix for others)")
    parser.add_argument("--split", choices=("train", "validation"), default="train")
    parser.add_argument("--seed", type=int, default=0, help="scene seed and crop seed")
    parser.add_argument("--resolution", type=int, default=None,
                        help="scenes resolution (default: the tokenizers' resolution)")
    parser.add_argument("--shards", type=int, default=8, help="number of shards")
    parser.add_argument("--batch-size", type=int, default=64, help="samples tokenized at once")
    parser.add_argument("--flip-prob", type=float, default=0.0,
                        help="horizontal flip probability of the extra crops (0 for scenes: "
                             "captions state left/right)")
    parser.add_argument("--pixel-inputs", nargs="*", default=[], metavar="MODALITY",
                        help="also store these image modalities' pixel patches (uint8) as input "
                             "modalities '<name>_pixels', e.g. rgb (the reference's rgb@224)")
    parser.add_argument("--process-index", type=int, default=None,
                        help="this worker's index (default: jax.process_index())")
    parser.add_argument("--process-count", type=int, default=None,
                        help="number of workers (default: jax.process_count())")
    from m4.distributed import add_distributed_arguments
    add_distributed_arguments(parser)


def main(args) -> int:
    from m4.distributed import initialize_from_args
    initialize_from_args(args)
    import jax

    index = jax.process_index() if args.process_index is None else args.process_index
    count = jax.process_count() if args.process_count is None else args.process_count
    try:
        tokenizers = find_tokenizers(args.tokenizers, args.modalities)
        resolution = args.resolution or tokenizer_resolution(tokenizers)
        source = open_source(args.data, split=args.split, n=args.n, seed=args.seed,
                             resolution=resolution)
        result = pretokenize(source, tokenizers, args.out, crops=args.crops,
                             num_shards=args.shards, seed=args.seed, batch_size=args.batch_size,
                             process_index=index, process_count=count, flip_prob=args.flip_prob,
                             pixel_inputs=args.pixel_inputs)
    except (PretokenizeError, shards.ShardError) as e:
        print(f"m4 pretokenize: error: {e}")
        return 2
    print(json.dumps(result))
    return 0
