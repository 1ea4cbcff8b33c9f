"""``dynacomp data speech``: synthesise aligned speech; ``dynacomp data speech-info``: describe a set."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import time
from pathlib import Path
from typing import Any

from dynacomp.config import add_config_args, config_from_args
from dynacomp.console import add_json_flag, emit
from dynacomp.data.speech import SPLITS
from dynacomp.data.speech_synthesis import SpeechSynthConfig, sentences_from_text, synthesize_dataset
from dynacomp.data.text import load_split
from dynacomp.errors import Failure
from dynacomp.io import read_text


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "speech", help="synthesise 16 kHz speech with exact phone boundaries (eSpeak NG)",
        description="Synthesise speech with eSpeak NG, with the exact start of every phone: "
                    "DIR/{train,validation,test}/SPEAKER/UTT.{wav,phn,wrd,txt} and DIR/manifest.json. "
                    "Splits are by speaker (voice + variant): test voices are never heard in training.")
    parser.add_argument("--out", type=Path, required=True, help="folder to write (replaced when complete)")
    add_config_args(parser, SpeechSynthConfig)
    add_json_flag(parser)
    parser.set_defaults(func=_synthesize)

    info = sub.add_parser("speech-info", help="summarise a synthetic speech set",
                          description="Hours, speakers and phones of a set made by `dynacomp data speech`.")
    info.add_argument("dir", type=Path, help="the folder given to --out")
    add_json_flag(info)
    info.set_defaults(func=_info)


def _sentences(config: SpeechSynthConfig) -> dict[str, list[str]] | list[str]:
    """Sentences from --text, else from the embedded corpus's own train/validation/test splits."""
    if config.text is not None:
        sentences = sentences_from_text(read_text(config.text, "--text file"), config.min_chars, config.max_chars)
        if len(sentences) < len(SPLITS):
            raise Failure(f"--text {config.text} holds {len(sentences)} usable sentences "
                          f"({config.min_chars}-{config.max_chars} characters); need at least {len(SPLITS)}")
        return sentences
    return {split: sentences_from_text(load_split(config.corpus, split), config.min_chars, config.max_chars)
            for split in SPLITS}


def _synthesize(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    config = config_from_args(SpeechSynthConfig, args)
    manifest = synthesize_dataset(args.out, _sentences(config), config, command=_command(args.out, config))
    seconds = time.perf_counter() - started
    emit({"out": str(args.out), "seconds": round(seconds, 2),
          "realtime_factor": round(manifest["hours"] * 3600 / seconds, 1), **_summary(manifest)}, args.json)
    return 0


def _command(out: Path, config: SpeechSynthConfig) -> str:
    """The command that remakes this set: the options that differ from the defaults, as flags."""
    words, default = ["dynacomp", "data", "speech", "--out", str(out)], SpeechSynthConfig()
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if value != getattr(default, f.name):
            values = value if isinstance(value, tuple) else [value]
            words += ["--" + f.name.replace("_", "-"), *map(str, values)]
    return shlex.join(words)


def _summary(manifest: dict[str, Any]) -> dict[str, Any]:
    return {"synthesizer": manifest["synthesizer"], "sample_rate": manifest["sample_rate"],
            "hours": manifest["hours"], "utterances": manifest["utterances"],
            "splits": {k: {"hours": v["hours"], "utterances": v["utterances"], "speakers": len(v["speakers"])}
                       for k, v in manifest["splits"].items()},
            "phone_inventory": len(manifest["phones"]), "command": manifest["command"]}


def _info(args: argparse.Namespace) -> int:
    path = args.dir / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise Failure(f"{args.dir} is no synthetic speech set ({err}): make one with "
                      f"`dynacomp data speech --hours 1 --out {args.dir}`") from err
    emit(manifest if args.json else _summary(manifest), args.json)
    return 0
