"""``dynacomp data``: prepare and inspect corpora, synthesise speech."""

from __future__ import annotations

import argparse

from dynacomp.data import speech_cli, text_cli


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("data", help="embedded corpora, benchmark text loaders, synthetic speech",
                            description="Text corpora and speech data sets: fetch, inspect, synthesise.")
    data_sub = parser.add_subparsers(dest="data_command", metavar="COMMAND", required=True)
    text_cli.register(data_sub)
    speech_cli.register(data_sub)
