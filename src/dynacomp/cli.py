"""The ``dynacomp`` command: parses the command line, then hands over to a group's ``cli`` module.

Each group module exposes ``register(subparsers)``, which adds its sub-parser and sets
``func(args) -> int | None`` on every leaf command.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# group name -> module with register(); None: the system has not landed yet.
GROUPS: dict[str, tuple[str | None, str]] = {
    "dmc": ("dynacomp.dmc.cli", "Dynamic Memory Compression: retrofit an LLM to merge its KV cache"),
    "dtp": ("dynacomp.dtp.cli", "Dynamic Token Pooling: hourglass character LMs with learned boundaries"),
    "hcpc": (None, "variable-rate hierarchical CPC: speech units and phone segmentation"),
    "vq": (None, "robust vector-quantised bottlenecks and a VQ-VAE"),
    "data": ("dynacomp.data.cli", "embedded corpora, benchmark text loaders, synthetic speech"),
    "models": ("dynacomp.models.cli", "pretrained language models: embedded, local, Hugging Face"),
    "demo": ("dynacomp.demo", "run the main job on the embedded defaults"),
}


def _not_yet(name: str):
    def run(args: argparse.Namespace) -> int:
        print(f"dynacomp {name}: not yet available in this version", file=sys.stderr)
        return 2
    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dynacomp",
        description="Learned, variable-rate compression of sequences: where to merge, pool or "
                    "discretise. Every command takes --help.",
    )
    sub = parser.add_subparsers(dest="group", metavar="GROUP", required=True)
    for name, (module, help_text) in GROUPS.items():
        if module is None:
            p = sub.add_parser(name, help=f"{help_text} (not yet available)", description=help_text)
            p.set_defaults(func=_not_yet(name))
        else:
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
