"""`m4 convert`: import checkpoints of other implementations.

    m4 convert ml4m --checkpoint model.safetensors [--config config.json] --out DIR
    m4 convert ml4m --checkpoint model.safetensors --verify FIXTURE_DIR [--out DIR]

--verify runs every case of a parity fixture (the ml4m_parity format) on the converted model,
prints JSON with the max abs difference of every quantity of every case, and exits with 1 when
one is above tolerance.
"""

from __future__ import annotations

import argparse
import json
import sys

_TRI = {"auto": None, "true": True, "false": False}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="source", metavar="<source>")
    p = sub.add_parser("ml4m", help="apple/ml-4m (4M-7 / 4M-21) safetensors checkpoint",
                       description="Convert an apple/ml-4m checkpoint (safetensors + config) "
                                   "to m4.")
    p.add_argument("--checkpoint", required=True, help="model.safetensors in the reference layout")
    p.add_argument("--config", default=None,
                   help="the checkpoint's config.json (default: the safetensors metadata)")
    p.add_argument("--out", default=None,
                   help="output folder in the m4 model layout (model_config.json, checkpoints/0, "
                        "modalities.json), loadable like an `m4 train` workdir")
    p.add_argument("--verify", default=None, metavar="FIXTURE_DIR",
                   help="run a parity fixture (ml4m_parity format) and print the differences")
    p.add_argument("--share-modality-embeddings", choices=list(_TRI), default="auto",
                   help="one modality embedding for encoder and decoder (auto: as the config)")
    p.add_argument("--tie-logits", choices=list(_TRI), default="auto",
                   help="output projection = decoder token embedding (auto: when the file has "
                        "no to_logits)")


def main(args) -> int:
    if getattr(args, "source", None) != "ml4m":
        print("m4 convert: choose a source, e.g. `m4 convert ml4m --help`", file=sys.stderr)
        return 2
    if args.out is None and args.verify is None:
        print("m4 convert ml4m: nothing to do: give --out and/or --verify", file=sys.stderr)
        return 2
    from m4.convert import ml4m
    from m4.convert.verify import verify_fixture

    try:
        model, config = ml4m.convert(
            args.checkpoint, args.config, args.out,
            share_modality_embeddings=_TRI[args.share_modality_embeddings],
            tie_logits=_TRI[args.tie_logits], progress=sys.stderr.isatty())
    except ml4m.ConversionError as e:
        print(f"m4 convert ml4m: {e}", file=sys.stderr)
        return 1
    if args.out is not None:
        print(f"wrote {args.out} ({len(config.modalities)} modalities, dim {config.dim}, "
              f"{config.encoder_depth}+{config.decoder_depth} blocks)", file=sys.stderr)
    if args.verify is not None:
        report = verify_fixture(model, args.verify)
        print(json.dumps(report, indent=1))
        if not report["passed"]:
            print(f"m4 convert ml4m: above tolerance: {report['failed']}", file=sys.stderr)
            return 1
    return 0
