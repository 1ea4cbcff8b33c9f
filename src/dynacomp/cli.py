"""The ``dynacomp`` command: parses the command line, then hands over to a group's ``cli`` module.

Each group module exposes ``register(subparsers)``, which adds its sub-parser and sets
``func(args) -> int | None`` on every leaf command.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# One module per command group, in the order --help lists them.
GROUPS = (
    "dynacomp.dmc.cli",      # Dynamic Memory Compression
    "dynacomp.dtp.cli",      # Dynamic Token Pooling
    "dynacomp.hcpc.cli",     # variable-rate hierarchical CPC
    "dynacomp.vqvae.cli",    # robust VQ and the VQ-VAE
    "dynacomp.data.cli",
    "dynacomp.models.cli",
    "dynacomp.demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dynacomp",
        description="Learned, variable-rate compression of sequences: where to merge, pool or "
                    "discretise. Every command takes --help.",
    )
    sub = parser.add_subparsers(dest="group", metavar="GROUP", required=True)
    for module in GROUPS:
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
