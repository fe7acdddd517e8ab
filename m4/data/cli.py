"""`m4 data`: look at the built-in scenes and write them in the on-disk formats.

    m4 data preview --n 8 --out grid.png              every modality of 8 scenes in one PNG
    m4 data preview --folder my_data --out grid.png   the same for a folder of your own data
    m4 data tfds --out data/tfds --train 1000 --val 100   the TFDS dataset m4_scenes
    m4 data export --n 100 --out my_data              the folder format, from scenes

Scene options: --seed, --resolution, and `--config.<field>=<value>` for any other SceneConfig
field (e.g. --config.max_figures=3).
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys

import ml_collections

from m4.config import apply_overrides

DEFAULT_RESOLUTION = 64


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an int >= 0, got {text}")
    return value


def _scene_options(p: argparse.ArgumentParser, *, resolution_default: int | None) -> None:
    p.add_argument("--seed", type=_non_negative_int, default=0,
                   help="dataset seed: scene i of seed s is the same everywhere (default 0)")
    p.add_argument("--resolution", type=_positive_int, default=resolution_default,
                   help=f"image height = width in pixels, 32..256 (default "
                        f"{resolution_default or f'{DEFAULT_RESOLUTION}, or the folder config'})")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = ("Any other SceneConfig field: --config.<field>=<value> "
                     "(e.g. --config.max_figures=3).")
    sub = parser.add_subparsers(dest="data_command", metavar="<subcommand>", required=True)

    p = sub.add_parser("preview", help="a PNG grid of every modality of N samples",
                       description="Write a PNG grid: one row per sample with rgb, depth, normals, "
                                   "semseg, poses, features and the caption.")
    p.add_argument("--n", type=_positive_int, default=8, help="samples to show (default 8)")
    p.add_argument("--out", default="preview.png", help="output PNG (default preview.png)")
    p.add_argument("--start", type=_non_negative_int, default=0,
                   help="first scene index (or first sample of --folder) (default 0)")
    p.add_argument("--folder", default=None,
                   help="show samples of this folder-format dataset instead of rendered scenes")
    p.add_argument("--tile", type=_positive_int, default=160,
                   help="size of one tile in pixels (default 160)")
    _scene_options(p, resolution_default=None)

    p = sub.add_parser("tfds", help="build the TFDS dataset m4_scenes (array_record, no TF)",
                       description="Build the TFDS dataset m4_scenes under --out: splits train "
                                   "(scenes 0..N-1) and validation (scenes 10^9..10^9+M-1), "
                                   "array_record files readable with tfds.data_source.")
    p.add_argument("--out", required=True, help="TFDS data_dir to build into")
    p.add_argument("--train", type=_non_negative_int, default=1000,
                   help="scenes in the train split (default 1000)")
    p.add_argument("--val", type=_non_negative_int, default=100,
                   help="scenes in the validation split (default 100)")
    _scene_options(p, resolution_default=DEFAULT_RESOLUTION)

    p = sub.add_parser("export", help="write scenes in the folder format (root/<modality>/<id>)",
                       description="Write scenes start..start+n-1 as root/<modality>/<id>.<ext> "
                                   "(png, npy, txt), the format for your own data.")
    p.add_argument("--n", type=_positive_int, required=True, help="scenes to write")
    p.add_argument("--out", required=True, help="new (or empty) folder to write")
    p.add_argument("--start", type=_non_negative_int, default=0, help="first scene index "
                                                                      "(default 0)")
    p.add_argument("--modalities", default=None,
                   help="comma-separated subset to write (default: all)")
    _scene_options(p, resolution_default=DEFAULT_RESOLUTION)


def scene_config_from_args(args: argparse.Namespace):
    """SceneConfig from --resolution and --config.<field>=<value> (typed, unknown fields fail)."""
    from m4.data import scenes

    base = scenes.SceneConfig(resolution=args.resolution or DEFAULT_RESOLUTION)
    fields = ml_collections.ConfigDict(dataclasses.asdict(base))
    apply_overrides(fields, getattr(args, "config_overrides", []) or [])
    return scenes.SceneConfig(**fields.to_dict())


def _preview(args: argparse.Namespace) -> None:
    from m4.data import folder, scenes, visualize

    if args.folder is not None:
        explicit = args.resolution is not None or args.config_overrides
        ds = folder.FolderDataset(args.folder, scene_config_from_args(args) if explicit else None)
        stop = min(args.start + args.n, len(ds))
        if args.start >= len(ds):
            raise folder.FolderError(f"--start: expected < {len(ds)} (samples in {args.folder}), "
                                     f"found {args.start}")
        samples, config = [ds[i] for i in range(args.start, stop)], ds.config
        source = f"{len(samples)} samples of {args.folder}"
    else:
        config = scene_config_from_args(args)
        samples = [scenes.render(args.seed, i, config)
                   for i in range(args.start, args.start + args.n)]
        source = f"scenes {args.start}..{args.start + args.n - 1} of seed {args.seed}"
    image = visualize.preview_grid(samples, config, tile=args.tile)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out)
    print(f"wrote {out} ({image.width}x{image.height}): {source}")


def _tfds(args: argparse.Namespace) -> None:
    from m4.data import tfds_scenes

    config = tfds_scenes.make_config(num_train=args.train, num_validation=args.val,
                                     seed=args.seed, scene=scene_config_from_args(args))
    builder, built_now = tfds_scenes.build(args.out, config)
    print(f"{'built' if built_now else 'found already built'} {tfds_scenes.NAME}/{config.name} "
          f"in {builder.data_dir}")
    print("read it with:\n"
          f"  tfds.data_source('{tfds_scenes.NAME}/{config.name}', data_dir='{args.out}')\n"
          f"  m4.data.tfds_scenes.open_split('{args.out}', '{config.name}', 'train')")


def _export(args: argparse.Namespace) -> None:
    from m4.data import folder

    modalities = None
    if args.modalities is not None:
        modalities = [m.strip() for m in args.modalities.split(",") if m.strip()]
    ids = folder.export_scenes(args.out, args.n, seed=args.seed, start=args.start,
                               config=scene_config_from_args(args), modalities=modalities,
                               progress=True)
    print(f"wrote {len(ids)} samples ({ids[0]} .. {ids[-1]}) to {args.out}")


def main(args: argparse.Namespace) -> int:
    commands = {"preview": _preview, "tfds": _tfds, "export": _export}
    try:
        commands[args.data_command](args)
    except ValueError as e:
        # m4's own errors are about bad input or bad data, and their message says what and
        # where: print it alone. Anything else is a bug and keeps its traceback.
        if not type(e).__module__.startswith("m4."):
            raise
        print(f"m4 data {args.data_command}: error: {e}", file=sys.stderr)
        return 2
    return 0
