"""``lhcad-convert-lhco``: convert an LHC Olympics 2020 R&D file into an lhcad dataset.

    lhcad-convert-lhco events_anomalydetection.h5 data/lhco
    lhcad-convert-lhco events_anomalydetection_v2.features.h5 data/lhco_features --kind features
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from lhcad.data.jets import JetConfig
from lhcad.data.lhco import convert_lhco
from lhcad.data.storage import DatasetError

logger = logging.getLogger("lhcad.cli.convert_lhco")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    parser = argparse.ArgumentParser(
        prog="lhcad-convert-lhco",
        description="Convert an LHC Olympics 2020 R&D file (raw particles or v2 jet features) into an lhcad "
        "dataset with samples 'qcd' and 'signal'.",
    )
    parser.add_argument("src", help="events_anomalydetection.h5 or events_anomalydetection_v2.features.h5")
    parser.add_argument("out", help="output dataset directory")
    parser.add_argument("--kind", choices=("raw", "features"), default="raw",
                        help="layout of SRC (default: raw)")
    parser.add_argument("--n-events", type=_non_negative, default=None,
                        help="number of file rows to convert (default: all)")
    parser.add_argument("--start", type=_non_negative, default=0, help="first file row (default: 0)")
    parser.add_argument("--images", action="store_true", help="also store per-jet images (raw only)")
    parser.add_argument("--constituents", type=_non_negative, default=0, metavar="K",
                        help="also store the K hardest constituents per jet (raw only)")
    parser.add_argument("--shard-size", type=_positive, default=100_000, help="events per shard file")
    parser.add_argument("--chunk-size", type=_positive, default=None,
                        help="file rows read at once (default: 10000 raw, 100000 features)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the qcd/signal samples if OUT already holds them")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.kind == "features" and (args.images or args.constituents):
        parser.error("--images and --constituents need the raw file (--kind raw): "
                     "the features file has no particles")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    jet_config = JetConfig(images=args.images, n_constituents=args.constituents)
    try:
        counts = convert_lhco(
            args.src, args.out, kind=args.kind, n_events=args.n_events, start=args.start,
            shard_size=args.shard_size, jet_config=jet_config, chunk_size=args.chunk_size,
            overwrite=args.overwrite, progress=not args.no_progress,
        )
    except DatasetError as exc:
        logger.error("%s", exc)
        return 1
    logger.info("wrote %s to %s", ", ".join(f"{n} {s} events" for s, n in counts.items()), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
