"""The ``dynacomp`` command: parses the command line, then hands over to a group's ``cli`` module.

Each group module exposes ``register(subparsers)``, which adds its sub-parser and sets
``func(args) -> int | None`` on every leaf command. Commands raise, never print errors: ``main``
is the one place that turns an exception into one line on stderr and an exit status
(``dynacomp.errors``); ``--debug`` or ``DYNACOMP_DEBUG=1`` adds the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from typing import NoReturn

from dynacomp.console import bars_enabled
from dynacomp.errors import USAGE, describe

# One module per command group, in the order --help lists them.
GROUPS = (
    "dynacomp.dmc.cli",      # Dynamic Memory Compression
    "dynacomp.serve.cli",    # serving a compressed cache
    "dynacomp.dtp.cli",      # Dynamic Token Pooling
    "dynacomp.hcpc.cli",     # variable-rate hierarchical CPC
    "dynacomp.vqvae.cli",    # robust VQ and the VQ-VAE
    "dynacomp.data.cli",
    "dynacomp.models.cli",
    "dynacomp.demo",
)


class Parser(argparse.ArgumentParser):
    """argparse with its error on one line, and where to look (sub-parsers inherit the class)."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="dynacomp",
        description="Learned, variable-rate compression of sequences: where to merge, pool or "
                    "discretise. Every command takes --help.",
    )
    parser.add_argument("--debug", action="store_true",
                        help="on an error, show its traceback too (or set DYNACOMP_DEBUG=1)")
    sub = parser.add_subparsers(dest="group", metavar="GROUP", required=True)
    for module in GROUPS:
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    if not bars_enabled():   # transformers' and the hub's bars (read when they are imported) follow our rule
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    args = build_parser().parse_args(argv)   # exits 2 on a malformed command line
    try:
        return args.func(args) or 0
    except (Exception, KeyboardInterrupt) as err:
        if args.debug or os.environ.get("DYNACOMP_DEBUG", "") not in ("", "0"):
            traceback.print_exc()
        status, line = describe(err)
        print(line, file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())
