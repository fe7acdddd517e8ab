"""The folder format: a user's own aligned multimodal data as plain files.

    export_scenes("my_data", n=100, config=SceneConfig(resolution=32))   # or export_folder(...)
    ds = FolderDataset("my_data")          # checks the layout; config from scene_config.json
    sample = ds[0]                         # checks the files; same keys/dtypes as scenes.render
    ds.ids[0]                              # "00000000"

    root/
      scene_config.json     optional: the SceneConfig fields the data was made for (export
                            writes it; otherwise pass `config=`, default SceneConfig())
      rgb/<id>.png          uint8 [H, W, 3]   8-bit RGB PNG
      depth/<id>.npy        float32 [H, W]    z-depth, metres
      normals/<id>.npy      float32 [H, W, 3] unit normals, camera frame
      semseg/<id>.png       uint8 [H, W]      class ids: 8-bit grey or palette PNG
      caption/<id>.txt      UTF-8 text (one final line ending is not part of it)
      poses/<id>.npy        float32 [num_figures, J, 3]  as many rows as figures (0 allowed)
      features/<id>.npy     float32 [H/p, W/p, C]

The rule behind the extensions: text is .txt, uint8 image-like arrays are .png, everything else
.npy (`file_extension`), so a new modality with a spec gets a file type without code here.
Dtypes, shapes and value ranges are those of `scenes.raw_specs(config)`.

A sample is the same <id> (the file name without its extension) in every modality folder. A
folder may hold any subset of the modalities: by default the modality folders present are used,
or ask for some with `modalities=` (then a missing folder is an error and other folders are not
read). Nothing is dropped silently: on open, ids that are not in every modality folder, files
with another extension, nested folders and unknown folder names are errors that list what was
expected and what was found; on read, a file whose dtype, shape or values do not match its spec
is an error naming the file. Names starting with "." are ignored (editor and OS litter, and the
temporary files of an interrupted export).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import pathlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from m4.data import raw_checks, scenes
from m4.data.raw_checks import NUM_FIGURES, POSES, RawDataError, error

CONFIG_FILE = "scene_config.json"
# How many ids an error lists per modality before it says "and N more".
_LIST_LIMIT = 10


class FolderError(RawDataError):
    """A folder whose layout or files do not match the folder format."""


def file_extension(spec: scenes.RawSpec) -> str:
    if spec.dtype == "str":
        return ".txt"
    if spec.dtype == "uint8" and (len(spec.shape) == 2 or
                                  (len(spec.shape) == 3 and spec.shape[-1] == 3)):
        return ".png"
    return ".npy"


def scene_id(index: int) -> str:
    """The id export gives scene `index`: zero-padded, so names sort in index order."""
    return f"{index:08d}"


def _visible_entries(directory: pathlib.Path) -> list[os.DirEntry]:
    with os.scandir(directory) as entries:
        return sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: e.name)


def _preview(ids: Sequence[str]) -> str:
    shown = ", ".join(ids[:_LIST_LIMIT])
    return shown + (f" and {len(ids) - _LIST_LIMIT} more" if len(ids) > _LIST_LIMIT else "")


def _read_config_file(root: pathlib.Path) -> scenes.SceneConfig | None:
    path = root / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        fields = json.loads(path.read_text())
        return scenes.SceneConfig(**fields)
    except (ValueError, TypeError) as e:  # bad JSON, unknown field, invalid value
        raise FolderError(f"{path}: expected the JSON fields of a SceneConfig, found an error: "
                          f"{e}") from None


class FolderDataset:
    """Random access to the samples of a folder; each file is checked when it is read.

    `ds[i]` is a raw sample: the keys and dtypes of `scenes.render` for the modalities present
    (caption a str; with poses, `num_figures` and poses padded to [max_figures, J, 3]).
    `ds.ids[i]` is its id.
    """

    def __init__(self, root: str | os.PathLike, config: scenes.SceneConfig | None = None, *,
                 specs: Mapping[str, scenes.RawSpec] | None = None,
                 modalities: Sequence[str] | None = None):
        self.root = pathlib.Path(root)
        if not self.root.is_dir():
            raise FolderError(f"{self.root}: expected a folder, found "
                              f"{'a file' if self.root.exists() else 'nothing'}")
        if specs is None:
            stored = _read_config_file(self.root)
            if config is not None and stored is not None and stored != config:
                raise FolderError(f"{self.root / CONFIG_FILE}: config: expected {config} (the "
                                  f"one passed in), found {stored}")
            self.config = config or stored or scenes.SceneConfig()
            specs = scenes.raw_specs(self.config)
        else:
            self.config = config
        self.specs = dict(specs)
        self.modalities = self._find_modalities(modalities)
        self.ids = self._aligned_ids()  # sorted as strings
        self._id_set = frozenset(self.ids)

    def _find_modalities(self, requested: Sequence[str] | None) -> tuple[str, ...]:
        known = tuple(self.specs)
        if requested is not None:
            unknown = [m for m in requested if m not in self.specs]
            if unknown:
                raise FolderError(f"{self.root}: modalities: expected names from {list(known)}, "
                                  f"found {unknown}")
            missing = [m for m in requested if not (self.root / m).is_dir()]
            if missing:
                raise FolderError(f"{self.root}: expected a folder for each requested modality "
                                  f"{list(requested)}, found none for {missing}")
            return tuple(m for m in known if m in requested)  # spec order
        folders = [e.name for e in _visible_entries(self.root) if e.is_dir()]
        unknown = [f for f in folders if f not in self.specs]
        if unknown:
            raise FolderError(f"{self.root}: expected only modality folders {list(known)}, found "
                              f"also {unknown} (rename them, or pass modalities= to read a "
                              f"subset)")
        if not folders:
            raise FolderError(f"{self.root}: expected at least one modality folder of "
                              f"{list(known)}, found none")
        return tuple(m for m in known if m in folders)

    def _aligned_ids(self) -> list[str]:
        ids_of: dict[str, set[str]] = {}
        for name in self.modalities:
            folder = self.root / name
            extension = file_extension(self.specs[name])
            ids = set()
            for entry in _visible_entries(folder):
                path = folder / entry.name
                if entry.is_dir():
                    raise FolderError(f"{path}: expected a {extension} file, found a folder")
                stem, ext = os.path.splitext(entry.name)
                if ext != extension:
                    raise FolderError(f"{path}: expected a {extension} file ({name} files are "
                                      f"{extension}), found a {ext or 'extension-less'} file")
                ids.add(stem)
            ids_of[name] = ids
        every = set.union(*ids_of.values())
        gaps = {name: sorted(every - ids) for name, ids in ids_of.items() if every - ids}
        if gaps:
            lines = []
            for name, missing in gaps.items():
                ext = file_extension(self.specs[name])
                lines.append(f"  {name}/: {len(missing)} missing: "
                             f"{_preview([f'{name}/{i}{ext}' for i in missing])}")
            raise FolderError(
                f"{self.root}: expected the same sample ids in every modality folder "
                f"({', '.join(self.modalities)}); found files missing:\n" + "\n".join(lines))
        if not every:
            raise FolderError(f"{self.root}: expected samples, found empty modality folders "
                              f"{list(self.modalities)}")
        return sorted(every)

    def path(self, sid: str, modality: str) -> pathlib.Path:
        return self.root / modality / (sid + file_extension(self.specs[modality]))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"{self.root}: sample {i} out of range (len {len(self)})")
        return self.read(self.ids[i])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for sid in self.ids:
            yield self.read(sid)

    def read(self, sid: str) -> dict[str, Any]:
        """The sample with id `sid` (see __getitem__ for the keys)."""
        if sid not in self._id_set:
            raise KeyError(f"{self.root}: no sample with id {sid!r}")
        sample: dict[str, Any] = {}
        for name in self.modalities:
            path = self.path(sid, name)
            spec = self.specs[name]
            value = read_file(path, name, spec)
            if name == POSES:
                value, sample[NUM_FIGURES] = raw_checks.pad_poses(value, spec, where=str(path))
            sample[name] = raw_checks.check_value(name, value, spec, where=str(path))
        return sample


def read_file(path: pathlib.Path, name: str, spec: scenes.RawSpec) -> Any:
    """Decode one file as stored; checking it against the spec is the caller's next step."""
    extension = file_extension(spec)
    if extension == ".png":
        return raw_checks.decode_png(path, where=str(path), field=name)
    if extension == ".txt":
        data = path.read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise error(str(path), name, "UTF-8 text",
                        f"byte {data[e.start]:#04x} at offset {e.start}") from None
        # One line ending closes the file (export writes it; editors add it); the rest is text.
        for ending in ("\r\n", "\n"):
            if text.endswith(ending):
                return text[:-len(ending)]
        return text
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:  # not .npy, truncated, or pickled objects
        raise error(str(path), name, "a readable .npy array file",
                    f"{type(e).__name__}: {e}") from None


# ---------------------------------------------------------------------------------------------
# Writing.

def _write_atomic(path: pathlib.Path, data: bytes) -> None:
    # A hidden temporary name (ignored by readers) renamed at the end: an interrupted export
    # never leaves a truncated file that looks like a sample.
    tmp = path.with_name("." + path.name + ".partial")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _encode(name: str, value: Any, spec: scenes.RawSpec) -> bytes:
    extension = file_extension(spec)
    if extension == ".png":
        return raw_checks.encode_png(value)
    if extension == ".txt":
        return (value + "\n").encode("utf-8")  # the reader strips exactly this line ending
    buffer = io.BytesIO()
    np.save(buffer, value, allow_pickle=False)
    return buffer.getvalue()


def _check_id(sid: str) -> str:
    if (not isinstance(sid, str) or not sid or sid.startswith(".")
            or "/" in sid or os.sep in sid):
        raise FolderError(f"sample id: expected a non-empty file name not starting with '.', "
                          f"found {sid!r}")
    return sid


def export_folder(root: str | os.PathLike, samples: Iterable[Mapping[str, Any]], *,
                  config: scenes.SceneConfig, ids: Iterable[str] | None = None,
                  modalities: Sequence[str] | None = None, total: int | None = None,
                  progress: bool = False) -> list[str]:
    """Write raw samples (checked first) into a new folder; returns the ids written.

    `ids` default to scene_id(0), scene_id(1), ...; `modalities` default to all of the spec.
    `root` must not exist or be empty, so two exports never mix.
    """
    root = pathlib.Path(root)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise FolderError(f"{root}: expected a new or empty folder, found "
                          f"{'a non-empty folder' if root.is_dir() else 'a file'}")
    specs = scenes.raw_specs(config)
    modalities = tuple(specs) if modalities is None else tuple(modalities)
    unknown = [m for m in modalities if m not in specs]
    if unknown:
        raise FolderError(f"modalities: expected names from {list(specs)}, found {unknown}")
    for name in modalities:
        (root / name).mkdir(parents=True, exist_ok=True)
    (root / CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(config), indent=1) + "\n")
    id_iter = iter(ids) if ids is not None else None
    written: list[str] = []
    seen: set[str] = set()
    for k, sample in enumerate(tqdm(samples, total=total, desc="export", unit="sample",
                                    disable=not progress)):
        sid = _check_id(next(id_iter) if id_iter is not None else scene_id(k))
        if sid in seen:
            raise FolderError(f"sample id: expected unique ids, found {sid!r} twice")
        seen.add(sid)
        checked = raw_checks.check_sample(sample, specs, where=f"sample {sid!r}",
                                          modalities=modalities)
        if POSES in checked:  # the file holds only the rows of real figures
            checked[POSES] = checked[POSES][:checked[NUM_FIGURES]]
        for name in modalities:
            _write_atomic(root / name / (sid + file_extension(specs[name])),
                          _encode(name, checked[name], specs[name]))
        written.append(sid)
    return written


def export_scenes(root: str | os.PathLike, n: int, *, seed: int = 0, start: int = 0,
                  config: scenes.SceneConfig | None = None,
                  modalities: Sequence[str] | None = None, progress: bool = False) -> list[str]:
    """Render scenes (seed, start .. start+n-1) into a new folder; ids are scene_id(index)."""
    config = config or scenes.SceneConfig()
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise FolderError(f"n: expected an int >= 1, found {n!r}")
    indices = range(start, start + n)
    samples = (scenes.render(seed, i, config) for i in indices)
    return export_folder(root, samples, config=config, ids=[scene_id(i) for i in indices],
                         modalities=modalities, total=n, progress=progress)
