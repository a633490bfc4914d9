"""``python -m bench``: measure the runtime against its floors and print the table.

``main(argv) -> int`` is the whole command; exit 0 after a complete run (targets met or
not: they are reported, not enforced), 1 when something could not be measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import report, runner
from bench.load import CallFailed
from bench.servers import ROOT, ServerFailed

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="a few calls and fractions of a second per figure (smoke test)")
    parser.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH",
                        help="write the results as JSON to PATH (or stdout: the table then "
                             "goes to stderr)")
    parser.add_argument("--config", type=Path, default=ROOT / "config" / "settings.toml",
                        help="the server's settings file (default: config/settings.toml)")
    parser.add_argument("--backend", choices=("process", "auto", "microvm", "gvisor"),
                        default="process", help="the server's sandbox backend (default: process)")
    parser.add_argument("--no-gvisor", dest="gvisor", action="store_false",
                        help="no gvisor rows (by default, with --backend process, a server on "
                             "the gvisor backend is measured beside it when runsc works here)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("bench").setLevel(logging.INFO)  # progress lines; quiet otherwise
    plan = runner.QUICK if args.quick else runner.Plan()
    try:
        results = asyncio.run(runner.run(plan, args.config.resolve(), args.backend, args.gvisor))
    except (ServerFailed, CallFailed, OSError) as exc:
        print(f"bench: cannot measure: {exc}", file=sys.stderr)
        return 1
    results["rows"] = [row.to_json() for row in report.rows(results)]
    to_stdout = args.json == "-"
    print(report.table(results), file=sys.stderr if to_stdout else sys.stdout, flush=True)
    if args.json is not None:
        _write_json(results, args.json)
    return 0


def _write_json(results: dict[str, Any], destination: str) -> None:
    text = json.dumps(results, indent=2) + "\n"
    if destination == "-":
        sys.stdout.write(text)
    else:
        Path(destination).write_text(text)
        log.info("results written to %s", destination)
