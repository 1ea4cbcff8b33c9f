"""Foundation timings: embedded-model conversion and reload, speech synthesis, corpus sizes.

    python benchmarks/foundation.py --out docs/results/foundation.md

Each timing runs in a fresh process (as a user's command would), with a fresh cache where the
first-time cost is measured. Writes a markdown table and a JSON file beside it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from common import machine

from dynacomp.io import write_json, write_text

LOAD = """
import time; t0 = time.perf_counter()
import torch, transformers
from dynacomp.models import load_causal_lm
t1 = time.perf_counter(); load_causal_lm("smollm2-135m"); t2 = time.perf_counter()
load_causal_lm("smollm2-135m"); t3 = time.perf_counter()
print(t1 - t0, t2 - t1, t3 - t2)
"""

SPEECH = """
import json, sys, time
from dynacomp.cli import main
t0 = time.perf_counter(); main(["data", "speech", "--hours", "1", "--out", sys.argv[1], "--json"])
print("SECONDS", time.perf_counter() - t0)
"""


def run_python(code: str, *args: str, env: dict | None = None) -> str:
    return subprocess.run([sys.executable, "-c", code, *args], check=True, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}).stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/results/foundation.md"))
    args = parser.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as cache:
        env = {"DYNACOMP_CACHE": cache}
        imports, first, _ = map(float, run_python(LOAD, env=env).split()[-3:])
        rows["smollm2: first load (GGUF de-quantised, safetensors written), s"] = first
        loads = [tuple(map(float, run_python(LOAD, env=env).split()[-3:])) for _ in range(3)]
        def median(i):
            return sorted(load[i] for load in loads)[1]
        rows["import torch + transformers + dynacomp.models, s (median of 3 fresh processes)"] = median(0)
        rows["smollm2: cached load in a fresh process, s (includes transformers importing its Llama code)"] = median(1)
        rows["smollm2: cached load, model code already imported, s"] = median(2)
    with tempfile.TemporaryDirectory() as out:
        output = run_python(SPEECH, str(Path(out) / "speech"))
        manifest = json.loads(output[:output.rindex("SECONDS")])
        rows["speech: --hours 1, wall s"] = float(output.split("SECONDS")[-1])
        rows["speech: hours written"] = manifest.get("hours")
        rows["speech: utterances"] = manifest.get("utterances")
    from dynacomp.data.text import corpus_info
    for name in ("english", "hebrew", "finnish", "vietnamese"):
        info = corpus_info(name)
        rows[f"text {name}: MB (train / validation / test chars)"] = (
            f"{info['bytes'] / 1e6:.2f} ({' / '.join(str(s['chars']) for s in info['splits'].values())})")

    host = machine()
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    date = datetime.date.today().isoformat()
    table = "\n".join(f"| {k} | {v:.2f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in rows.items())
    write_text(args.out, f"# Foundation timings\n\nCommand: `{command}`  \nMachine: {host}  \nDate: {date}\n\n"
                         f"| measurement | value |\n|---|---|\n{table}\n")
    write_json(args.out.with_suffix(".json"), {"command": command, "machine": host, "date": date, **rows})
    print(args.out.read_text())


if __name__ == "__main__":
    main()
