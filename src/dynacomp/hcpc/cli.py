"""``dynacomp hcpc``: train hierarchical CPC, segment audio, evaluate segmentation, ABX and a probe."""

from __future__ import annotations

import argparse
from pathlib import Path

from dynacomp.config import add_config_args, config_from_args
from dynacomp.console import add_json_flag, emit
from dynacomp.data.speech import boundaries_in_frames, read_audio
from dynacomp.data.speech_corpora import load_speech
from dynacomp.hcpc.eval import EvalConfig, evaluate
from dynacomp.hcpc.model import FRAME, HCPCConfig
from dynacomp.hcpc.plot import plot_segmentation
from dynacomp.hcpc.recipe import RunConfig, load_run, train_run
from dynacomp.hcpc.segment import SegmentConfig, read_any_audio, segment_folder
from dynacomp.train import TrainConfig

HELP = "variable-rate hierarchical CPC: speech units and phone segmentation"


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("hcpc", help=HELP, description="Variable-rate hierarchical CPC (Cuervo et al. 2022): "
                            "frame-level CPC, learned boundaries, segment-level CPC with quantised targets.")
    hcpc_sub = parser.add_subparsers(dest="hcpc_command", metavar="COMMAND", required=True)

    p = hcpc_sub.add_parser("train", help="train a model (resumes what --out holds)",
                            description="Train on the train split of a speech set: a synthetic one (`dynacomp data "
                                        "speech`) or a recorded corpus you have (--data timit:ROOT, buckeye:ROOT, "
                                        "librispeech:ROOT:ALIGNMENTS; speakers split as dynacomp.data."
                                        "speech_corpora.CORPORA says); "
                                        "writes hcpc.json, checkpoints and metrics.jsonl to --out. Paper optimiser: "
                                        "--lr 2e-4 --beta2 0.999 --weight-decay 0.")
    p.add_argument("--out", type=Path, required=True, help="run folder")
    for config_cls in (HCPCConfig, RunConfig, TrainConfig):
        add_config_args(p, config_cls)
    add_json_flag(p)
    p.set_defaults(func=_train)

    p = hcpc_sub.add_parser("segment", help="write phone-like boundaries for a folder of audio")
    p.add_argument("--run", type=Path, required=True, help="run folder (from hcpc train)")
    p.add_argument("--audio", type=Path, required=True, help="folder of .wav/.flac/.ogg files (searched recursively)")
    p.add_argument("--out", type=Path, required=True, help="JSON file of boundaries (frames and seconds)")
    p.add_argument("--plot", type=Path, default=None, help="also draw the first file with its boundaries here")
    add_config_args(p, SegmentConfig)
    add_json_flag(p)
    p.set_defaults(func=_segment)

    p = hcpc_sub.add_parser("eval", help="segmentation P/R/F1/R-value, ABX and a phone probe on a speech set")
    p.add_argument("--run", type=Path, required=True, help="run folder (from hcpc train)")
    p.add_argument("--data", type=Path, default=None, help="speech set (default: the run's training set)")
    p.add_argument("--plot", type=Path, default=None, help="draw the first scored utterance with its boundaries here")
    add_config_args(p, EvalConfig)
    add_json_flag(p)
    p.set_defaults(func=_eval)


def _train(args: argparse.Namespace) -> None:
    result = train_run(config_from_args(HCPCConfig, args), config_from_args(RunConfig, args),
                       config_from_args(TrainConfig, args), args.out)
    emit({"out": str(args.out), "step": result.step, "wall_time_s": result.wall_time,
          "checkpoint": str(result.checkpoint), "metrics": result.metrics}, args.json)


def _segment(args: argparse.Namespace) -> None:
    config = config_from_args(SegmentConfig, args)
    loaded = load_run(args.run)
    result = segment_folder(loaded.model, args.audio, args.out, config.prominence)
    if args.plot:
        first = next(iter(result))
        plot_segmentation(read_any_audio(args.audio / first).numpy(), 16000, result[first]["seconds"], args.plot,
                          title=first)
    emit({"out": str(args.out), "files": len(result),
          "boundaries": sum(len(r["frames"]) for r in result.values()),
          "frames": sum(r["num_frames"] for r in result.values())}, args.json)


def _eval(args: argparse.Namespace) -> None:
    config = config_from_args(EvalConfig, args)   # a bad option fails before the run is loaded
    loaded = load_run(args.run)
    data = args.data or loaded.record["run"].data
    result = {"run": str(args.run), "checkpoint": str(loaded.checkpoint), "data": str(data),
              **evaluate(loaded.model, data, config)}
    if args.plot:
        utt = load_speech(data, config.split)[0]
        # the readout the high-level features use: logit peaks at the strict prominence from validation
        segmentation = loaded.model.segment(read_audio(utt), result.get("high_level_prominence"))
        seconds = FRAME / utt.sample_rate
        predicted = segmentation.boundaries if loaded.model.config.hierarchical else []
        result["plot"] = str(plot_segmentation(read_audio(utt).numpy(), utt.sample_rate, [f * seconds for f in predicted],
                                               args.plot, [f * seconds for f in boundaries_in_frames(utt)], utt.id))
    emit(result, args.json)
