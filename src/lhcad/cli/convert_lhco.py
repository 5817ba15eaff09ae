"""``lhcad-convert-lhco``: convert LHC Olympics 2020 R&D files into an lhcad dataset.

    lhcad-convert-lhco events_anomalydetection.h5 data/lhco
    lhcad-convert-lhco events_anomalydetection_v2.features.h5 data/lhco_features --kind features
    lhcad-convert-lhco qcd_features.h5 signal_features.h5 data/lhco_features --kind features
    lhcad-convert-lhco more_qcd_features.h5 data/lhco_features --kind features --append

Exit status: 0 done (a warning names a sample left empty), 1 a bad input file or dataset,
2 bad arguments (including an output path that is a file).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from lhcad.data.jets import JetConfig
from lhcad.data.lhco import check_output_dir, convert_lhco
from lhcad.data.storage import DatasetError, load_manifest

logger = logging.getLogger("lhcad.cli.convert_lhco")
PROG = "lhcad-convert-lhco"


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
        prog=PROG,
        description="Convert LHC Olympics 2020 R&D files (raw particles or v2 jet features) into an lhcad "
        "dataset with samples 'qcd' (label 0) and 'signal' (label 1). Several files of one kind (e.g. "
        "per-label files) can be converted at once, or added later with --append.",
    )
    parser.add_argument("src", nargs="+", metavar="SRC",
                        help="events_anomalydetection.h5 or events_anomalydetection_v2.features.h5 "
                        "(or files in the same layout); several files of the same --kind are combined")
    parser.add_argument("out", metavar="OUT", help="output dataset directory")
    parser.add_argument("--kind", choices=("raw", "features"), default="raw",
                        help="layout of every SRC (default: raw)")
    parser.add_argument("--n-events", type=_non_negative, default=None,
                        help="number of rows to convert of each file (default: all)")
    parser.add_argument("--start", type=_non_negative, default=0, help="first row of each file (default: 0)")
    parser.add_argument("--images", action="store_true", help="also store per-jet images (raw only)")
    parser.add_argument("--constituents", type=_non_negative, default=0, metavar="K",
                        help="also store the K hardest constituents per jet (raw only)")
    parser.add_argument("--shard-size", type=_positive, default=100_000, help="events per shard file")
    parser.add_argument("--chunk-size", type=_positive, default=None,
                        help="file rows read at once (default: 10000 raw, 100000 features)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--append", action="store_true",
                      help="add the events to the qcd/signal samples OUT already holds (same --kind; "
                      "rows already converted are refused)")
    mode.add_argument("--overwrite", action="store_true",
                      help="first remove every sample OUT holds (converted or generated)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _fail(status: int, message: str) -> int:
    """One line on stderr, and the exit status."""
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.kind == "features" and (args.images or args.constituents):
        parser.error("--images and --constituents need the raw file (--kind raw): "
                     "the features file has no particles")
    try:
        check_output_dir(args.out)
    except DatasetError as exc:
        return _fail(2, str(exc))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    jet_config = JetConfig(images=args.images, n_constituents=args.constituents)
    try:
        counts = convert_lhco(
            args.src, args.out, kind=args.kind, n_events=args.n_events, start=args.start,
            shard_size=args.shard_size, jet_config=jet_config, chunk_size=args.chunk_size,
            overwrite=args.overwrite, append=args.append, progress=not args.no_progress,
        )
    except DatasetError as exc:
        logger.error("%s", exc)
        return 1
    except OSError as exc:  # disk full, permissions, ...
        return _fail(1, f"cannot write {args.out}: {exc}")
    totals = {s: e.get("n_events", 0) for s, e in load_manifest(args.out)["samples"].items() if s in counts}
    logger.info("wrote %s to %s (it now holds %s)", ", ".join(f"{n} {s} events" for s, n in counts.items()),
                args.out, ", ".join(f"{n} {s}" for s, n in totals.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
