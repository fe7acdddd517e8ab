"""The built-in scenes as a TFDS dataset, `m4_scenes`, built locally into array_record.

    config = make_config(resolution=32, num_train=8, num_validation=4)  # r32_seed0_train8_val4
    build("data/tfds", config)               # = M4Scenes(data_dir=..., config=config)
                                             #   .download_and_prepare()
    source = tfds.data_source(f"m4_scenes/{config.name}", data_dir="data/tfds")
    record = source["train"][0]              # numpy arrays; caption and scene as bytes
    sample = open_split("data/tfds", config.name, "train")[0]   # a checked raw sample

Splits. `train` holds scenes (seed, 0 .. num_train-1) and `validation` scenes
(seed, VALIDATION_START + 0 .. num_validation-1): disjoint index ranges, so the splits never
share a scene whatever their sizes, and the validation set does not change when the train split
grows. A split of size 0 is left out. Records are in index order (shuffling is the input
pipeline's job).

Configs. Every size is a builder config made by `make_config`; its name spells the sizes
(`r32_seed0_train8_val4`, plus a hash of any other non-default SceneConfig field), so builds of
different sizes sit side by side in one data_dir and a name always means the same data. The
SceneConfig is also stored in the dataset's metadata, so a reader gets the raw specs back without
knowing how the data was built.

Features (per record): one per modality of `scenes.raw_specs(cfg)` (rgb: PNG Image; caption:
Text; other arrays: zlib-compressed Tensors of the spec's dtype and shape, so semseg stays
uint8 [H, W] and poses [max_figures, J, 3]), plus num_figures, index (the scene index) and scene
(the JSON description, used to score generated captions).

No TensorFlow (tfds 4.9.10 without TF installed), and why each piece is written as it is:
- `DatasetInfo` is built directly: `dataset_info_from_configs` looks for metadata files next to
  the builder's source, which a builder outside the tfds package does not have.
- Images reach the `Image` feature as PNG bytes encoded with PIL: given a numpy array, tfds
  encodes it with `tf.image.encode_png`. Reading decodes with PIL (numpy path of tfds).
- Arrays use `Tensor(encoding="zlib")`, which tfds encodes and decodes with numpy and zlib.
- `file_format="array_record"` (the default here): tfrecord files would need TF to read.
- `code_path` is set on the class: tfds would otherwise import the undeclared
  `importlib_resources` package to find it (tensorflow/datasets#11212).
- Reading: `tfds.data_source` / `builder.as_data_source()` decode with numpy, never with TF.
  A reader does not even need this module: tfds rebuilds the builder from the files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from m4.data import raw_checks, scenes

NAME = "m4_scenes"
SPLITS = ("train", "validation")
# First scene index of the validation split (train uses 0 .. num_train-1).
VALIDATION_START = scenes.VALIDATION_START


class TfdsScenesError(ValueError):
    pass


@dataclasses.dataclass(eq=False)
class M4ScenesConfig(tfds.core.BuilderConfig):
    """Sizes of one build: the scene config, the dataset seed and the split sizes."""

    scene: scenes.SceneConfig = dataclasses.field(default_factory=scenes.SceneConfig)
    seed: int = 0
    num_train: int = 1000
    num_validation: int = 100


def make_config(resolution: int = 64, num_train: int = 1000, num_validation: int = 100,
                seed: int = 0, scene: scenes.SceneConfig | None = None) -> M4ScenesConfig:
    """A config whose name spells its sizes. `scene` overrides `resolution` when given."""
    scene = scene or scenes.SceneConfig(resolution=resolution)
    for field, value in (("seed", seed), ("num_train", num_train),
                         ("num_validation", num_validation)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise TfdsScenesError(f"make_config: {field}: expected an int >= 0, found {value!r}")
    if num_train > VALIDATION_START:
        raise TfdsScenesError(f"make_config: num_train: expected at most {VALIDATION_START} "
                              f"(validation scenes start there), found {num_train}")
    if num_train + num_validation == 0:
        raise TfdsScenesError("make_config: expected num_train + num_validation >= 1, found 0")
    name = f"r{scene.resolution}_seed{seed}_train{num_train}_val{num_validation}"
    if scene != scenes.SceneConfig(resolution=scene.resolution):
        digest = hashlib.sha256(json.dumps(dataclasses.asdict(scene), sort_keys=True).encode())
        name += f"_{digest.hexdigest()[:8]}"
    return M4ScenesConfig(
        name=name, scene=scene, seed=seed, num_train=num_train, num_validation=num_validation,
        description=f"{num_train} train / {num_validation} validation scenes of seed {seed}, "
                    f"{scene}")


def split_indices(config: M4ScenesConfig, split: str) -> range:
    if split == "train":
        return range(config.num_train)
    if split == "validation":
        return range(VALIDATION_START, VALIDATION_START + config.num_validation)
    raise TfdsScenesError(f"split: expected one of {SPLITS}, found {split!r}")


def _is_png(spec: scenes.RawSpec) -> bool:
    """Colour images are stored as PNG (small, viewable); class maps stay plain uint8 [H, W]."""
    return spec.dtype == "uint8" and len(spec.shape) == 3 and spec.shape[-1] == 3


def _feature(spec: scenes.RawSpec) -> tfds.features.FeatureConnector:
    if spec.dtype == "str":
        return tfds.features.Text()
    if _is_png(spec):
        return tfds.features.Image(shape=spec.shape, dtype=np.uint8, encoding_format="png")
    return tfds.features.Tensor(shape=spec.shape, dtype=np.dtype(spec.dtype), encoding="zlib")


def features_dict(scene: scenes.SceneConfig) -> tfds.features.FeaturesDict:
    features = {name: _feature(spec) for name, spec in scenes.raw_specs(scene).items()}
    features["num_figures"] = tfds.features.Scalar(dtype=np.int32)
    features["index"] = tfds.features.Scalar(dtype=np.int64)
    features["scene"] = tfds.features.Text()
    return tfds.features.FeaturesDict(features)


def encode_record(sample: dict[str, Any], index: int, specs: dict[str, scenes.RawSpec]
                  ) -> dict[str, Any]:
    """A checked raw sample -> what the features above take (images as PNG bytes)."""
    checked = raw_checks.check_sample(sample, specs, where=f"{NAME} scene {index}")
    record: dict[str, Any] = {}
    for name, value in checked.items():
        is_png = name in specs and _is_png(specs[name])
        record[name] = raw_checks.encode_png(value) if is_png else value
    record["index"] = index
    record["scene"] = json.dumps(sample["scene"], sort_keys=True)
    return record


class M4Scenes(tfds.core.GeneratorBasedBuilder):
    """The built-in scenes dataset (see the module docstring)."""

    # Bump when scenes.render changes its output: a config name promises the same data.
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release: every modality of m4.data.scenes."}
    BUILDER_CONFIG_CLASS = M4ScenesConfig
    BUILDER_CONFIGS = [make_config()]
    # tfds derives this from the package, and on the way imports `importlib_resources`, which
    # tfds 4.9.10 uses without declaring it (tensorflow/datasets#11212): say it directly.
    code_path = epath.Path(__file__)

    def __init__(self, *, config: M4ScenesConfig | str | None = None,
                 file_format: str | None = "array_record", **kwargs):
        if file_format not in ("array_record", tfds.core.FileFormat.ARRAY_RECORD):
            raise TfdsScenesError(f"{NAME}: file_format: expected 'array_record' (the only "
                                  f"format readable without TensorFlow), found {file_format!r}")
        # A name spells the whole config, so a config named like a predefined one is that one;
        # tfds compares configs by identity and would reject the equal copy.
        if isinstance(config, M4ScenesConfig) and config.name in self.builder_configs:
            config = config.name
        super().__init__(config=config, file_format=file_format, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        config: M4ScenesConfig = self.builder_config
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__.split("\n\n")[0],
            features=features_dict(config.scene),
            metadata=tfds.core.MetadataDict(scene_config=dataclasses.asdict(config.scene),
                                            seed=config.seed,
                                            validation_start=VALIDATION_START),
            disable_shuffling=True,  # records in scene-index order
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download: every scene is rendered here
        # tfds cannot write an empty split, so a size of 0 leaves that split out.
        return {split: self._generate_examples(split) for split in SPLITS
                if len(split_indices(self.builder_config, split))}

    def _generate_examples(self, split: str) -> Iterator[tuple[int, dict[str, Any]]]:
        config: M4ScenesConfig = self.builder_config
        specs = scenes.raw_specs(config.scene)
        for index in split_indices(config, split):  # tfds shows a progress bar over these
            sample = scenes.render(config.seed, index, config.scene)
            yield index, encode_record(sample, index, specs)


def build(data_dir: str | os.PathLike, config: M4ScenesConfig) -> tuple[M4Scenes, bool]:
    """Build `config` under data_dir unless it is there already.

    -> (the builder, whether it was built now). A config name always means the same data, so an
    existing build is reused as it is."""
    builder = M4Scenes(data_dir=os.fspath(data_dir), config=config)
    existed = builder.is_prepared()
    builder.download_and_prepare()
    return builder, not existed


# ---------------------------------------------------------------------------------------------
# Reading back: raw samples, checked like every other format.

class ScenesSplit:
    """One split of a built dataset as raw samples (the keys and dtypes of scenes.render,
    caption a str, scene a dict). Random access; each record is checked when read."""

    def __init__(self, data_dir: str | os.PathLike, config_name: str, split: str):
        if split not in SPLITS:
            raise TfdsScenesError(f"split: expected one of {SPLITS}, found {split!r}")
        name = f"{NAME}/{config_name}"
        try:
            builder = tfds.builder(name, data_dir=os.fspath(data_dir))
        except (ValueError, FileNotFoundError) as e:  # unknown config name, missing files
            raise TfdsScenesError(f"{name} in {os.fspath(data_dir)!r}: expected a built dataset, "
                                  f"found none ({type(e).__name__}: {e})") from e
        built = list(builder.info.splits)
        if not built:  # a predefined config that was never built
            raise TfdsScenesError(f"{name} in {os.fspath(data_dir)!r}: expected a built dataset, "
                                  f"found none")
        if split not in built:
            raise TfdsScenesError(f"{name} in {os.fspath(data_dir)!r}: split: expected one of "
                                  f"the built splits {built}, found {split!r}")
        self.scene_config = scenes.SceneConfig(**builder.info.metadata["scene_config"])
        self.specs = scenes.raw_specs(self.scene_config)
        self.split = split
        self._source = builder.as_data_source(split=split)
        self._where = f"{name} ({os.fspath(data_dir)}) {split}"

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"{self._where}: record {i} out of range (len {len(self)})")
        i = i % len(self)
        record = dict(self._source[i])
        where = f"{self._where} record {i} (scene {record.get('index')})"
        for key in ("caption", "scene"):
            if isinstance(record.get(key), bytes):
                record[key] = record[key].decode("utf-8")
        sample = raw_checks.check_sample(record, self.specs, where=where)
        sample["index"] = int(record["index"])
        sample["scene"] = json.loads(record["scene"])
        return sample

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(len(self)):
            yield self[i]


def open_split(data_dir: str | os.PathLike, config_name: str, split: str) -> ScenesSplit:
    return ScenesSplit(data_dir, config_name, split)
