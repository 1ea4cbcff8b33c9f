"""Serving a compressed cache, measured: correctness, capacity, throughput and latency of
`dynacomp serve` for the dense cache and DMC / DMS at one KV budget, side by side in one run.

For each server (the same engine and pool: dense = the same weights with compression off; DMC at
forced ratios; a trained checkpoint if given) this starts `dynacomp serve` on 127.0.0.1, then:
1. correctness: greedy outputs streamed at concurrency 1 and 16 against offline greedy generation
   of the same model (the share of identical tokens);
2. load: `dynacomp serve bench` with all requests at once (the capacity and saturation point), then
   Poisson arrivals at the given rates and at a fraction (0.8) of the dense server's saturation
   request rate; every run bounded in requests and time.
Then, offline and in this process, the dense engine against transformers' own continuous batching
(`generate_batch` with its paged cache at the same KV budget) on one fixed-length workload.
Writes RESULTS.{json,md} and RESULTS_load.png (throughput and p50 TPOT against offered load).

    python benchmarks/serving.py --kv-budget 48MiB --num-prompts 48 --rates 0.5 1 2 --out docs/results/serving.md
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import json
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import torch
from common import machine
from serving_anchor import add_workload_args, anchor_lines, fixed_workload, transformers_anchor

from dynacomp.io import figure, write_json, write_text
from dynacomp.serve.bench import LoadConfig, run_load
from dynacomp.serve.cli import ServeConfig, load_engine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, flags: list[str]):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen([sys.executable, "-m", "dynacomp.cli", "serve", "--port", str(self.port),
                                         *flags], stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(1)
            if self.process.poll() is not None:
                raise SystemExit(f"server {flags} died: {self.process.stderr.read()[-2000:]}")
        raise SystemExit(f"server {flags} did not start in 300 s")

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def flags_of(config: ServeConfig) -> list[str]:
    """The command-line flags of a ServeConfig's non-default fields."""
    flags = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if value != f.default:
            name = f.name.replace("_", "-")
            flags += [f"--{name}"] if value is True else [f"--no-{name}"] if value is False else [f"--{name}", str(value)]
    return flags


def greedy_agreement(server: Server, config: ServeConfig, prompts: list[list[int]], new: int) -> dict:
    """Share of greedy tokens equal to offline generation, at concurrency 1 and all at once."""
    engine = load_engine(config)
    offline = []
    with torch.no_grad():
        for p in prompts:
            out = engine.model.generate(torch.tensor([p]), max_new_tokens=new, do_sample=False,
                                        pad_token_id=engine.tokenizer.eos_token_id or 0,
                                        eos_token_id=None)
            offline.append(out[0, len(p):].tolist())

    def ask(client: httpx.Client, prompt: list[int], stream: bool) -> list[int]:
        body = {"prompt": prompt, "max_tokens": new, "temperature": 0, "ignore_eos": True, "stream": stream}
        text = client.post(server.url + "/v1/completions", json=body, timeout=600).text
        pieces = ([json.loads(line[6:])["choices"][0]["text"] for line in text.splitlines()
                   if line.startswith("data: {") and json.loads(line[6:])["choices"]] if stream
                  else [json.loads(text)["choices"][0]["text"]])
        return "".join(pieces)

    texts = [engine.tokenizer.decode(o, skip_special_tokens=True) for o in offline]
    with httpx.Client() as client:
        single = [ask(client, p, stream=i % 2 == 0) for i, p in enumerate(prompts)]

    async def together() -> list[str]:
        async with httpx.AsyncClient() as client:
            async def one(prompt):
                body = {"prompt": prompt, "max_tokens": new, "temperature": 0, "ignore_eos": True}
                response = await client.post(server.url + "/v1/completions", json=body, timeout=600)
                return response.json()["choices"][0]["text"]
            return await asyncio.gather(*(one(p) for p in prompts))

    batched = asyncio.run(together())

    def share(outputs: list[str]) -> float:
        same = total = 0
        for got, want in zip(outputs, texts):
            a, b = engine.tokenizer(got)["input_ids"], engine.tokenizer(want)["input_ids"]
            same += sum(x == y for x, y in zip(a, b))
            total += max(len(a), len(b))
        return same / total

    return {"concurrency_1": share(single), f"concurrency_{len(prompts)}": share(batched)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_workload_args(parser)
    parser.add_argument("--trained", nargs="*", default=[], help="retrofitted checkpoints (or shipped names) to add")
    parser.add_argument("--ratios", nargs="*", type=float, default=[2, 4, 8], help="forced DMC ratios")
    parser.add_argument("--rates", nargs="*", type=float, default=[0.5, 1.0])
    parser.add_argument("--saturation-fraction", type=float, default=0.8,
                        help="also run every server at this fraction of the dense server's all-at-once request rate")
    parser.add_argument("--check-prompts", type=int, default=16)
    parser.add_argument("--time-limit", type=float, default=900)
    parser.add_argument("--out", type=Path, default=Path("docs/results/serving.md"))
    args = parser.parse_args()

    common = {"kv_budget": args.kv_budget, "max_num_seqs": args.max_num_seqs, "page_size": args.page_size}
    servers = {"dense": ServeConfig(model=args.model, dense=True, **common)}
    servers |= {f"DMC x{r:g} (forced)": ServeConfig(model=args.model, force_cr=r, **common) for r in args.ratios}
    servers |= {f"{t} (trained)": ServeConfig(model=t, **common) for t in args.trained}
    results, rates = {}, list(args.rates)
    for name, config in servers.items():
        print(f"== {name}", file=sys.stderr)
        flags = flags_of(config)
        server = Server(flags)
        try:
            load = LoadConfig(url=server.url, num_prompts=args.num_prompts, input_len=args.input_len,
                              output_len=args.output_len, time_limit_s=args.time_limit)
            prompts = [[int(t) for t in torch.randint(100, 20000, (24,), generator=torch.Generator().manual_seed(i))]
                       for i in range(args.check_prompts)]
            results[name] = {"flags": flags, "greedy_agreement": greedy_agreement(server, config, prompts, 16),
                             "saturation": asyncio.run(run_load(load))}
            if name == "dense":              # the same offered loads for every server, dense first
                rates.append(round(args.saturation_fraction * results[name]["saturation"]["request_throughput"], 4))
            results[name]["poisson"] = [asyncio.run(run_load(LoadConfig(**{**vars(load), "request_rate": rate})))
                                        for rate in rates]
        finally:
            server.close()
        print(json.dumps({k: v for k, v in results[name]["saturation"].items() if "throughput" in k or "peak" in k}),
              file=sys.stderr)

    print("== transformers continuous batching", file=sys.stderr)
    anchor = transformers_anchor(args, fixed_workload(args))
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    header = {"command": command, "machine": machine("cpu"), "date": datetime.date.today().isoformat(),
              "kv_budget": args.kv_budget, "page_size": args.page_size, "saturation_rate": rates[-1]}
    write_json(args.out.with_suffix(".json"), {**header, "results": results, "offline_dense": anchor})
    with figure(args.out.with_name(args.out.stem + "_load.png"), ncols=2, figsize=(10, 4)) as (_, (tput, tpot)):
        for name, r in results.items():
            runs = [*r["poisson"], r["saturation"]]
            offered = [x["request_rate"] if x["request_rate"] != float("inf") else args.num_prompts for x in runs]
            tput.plot(offered, [x["output_throughput"] for x in runs], marker="o", label=name)
            tpot.plot(offered, [x["median_tpot_ms"] for x in runs], marker="o", label=name)
        tput.set(xlabel="offered load (requests/s; last point: all at once)", ylabel="output tokens/s", xscale="log")
        tpot.set(xlabel="offered load (requests/s; last point: all at once)", ylabel="p50 TPOT (ms)", xscale="log")
        tput.legend(fontsize=7)
        tput.grid(alpha=0.3)
        tpot.grid(alpha=0.3)
    lines = ["# Serving a compressed cache", "", f"- Command: `{command}`", f"- Machine: {header['machine']}",
             f"- Date: {header['date']}", f"- KV budget: {args.kv_budget}, pages of {args.page_size} slots", "",
             "All requests at once (running sequences scraped from /metrics every 0.2 s):", "",
             "| server | greedy = offline (c=1 / all) | peak running | mean running | x dense (peak / mean) | "
             "peak KV MiB | preemptions | output tok/s | x dense | p50 TTFT ms | p50 TPOT ms |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    dense = results["dense"]["saturation"]
    for name, r in results.items():
        s, agree = r["saturation"], list(r["greedy_agreement"].values())
        lines.append(f"| {name} | {agree[0]:.3f} / {agree[1]:.3f} | {s['peak_running']:.0f} | {s['mean_running']:.1f} | "
                     f"{s['peak_running'] / dense['peak_running']:.2f} / {s['mean_running'] / dense['mean_running']:.2f} | "
                     f"{s['peak_kv_bytes'] / 2**20:.1f} | {s['preemptions']:.0f} | {s['output_throughput']:.1f} | "
                     f"{s['output_throughput'] / dense['output_throughput']:.2f} | "
                     f"{s['median_ttft_ms']:.0f} | {s['median_tpot_ms']:.0f} |")
    lines += ["", f"Poisson arrivals (the last rate, {rates[-1]:g}/s, is {args.saturation_fraction:g} x the dense server's "
              "all-at-once request rate):", "", "| server | rate | output tok/s | p50 TTFT ms | p50 TPOT ms | p99 E2E ms |",
              "|---|---|---|---|---|---|"]
    for name, r in results.items():
        for x in r["poisson"]:
            lines.append(f"| {name} | {x['request_rate']:g} | {x['output_throughput']:.1f} | {x['median_ttft_ms']:.0f} | "
                         f"{x['median_tpot_ms']:.0f} | {x['p99_e2el_ms']:.0f} |")
    lines += ["", *anchor_lines(args, anchor),
              "", f"![throughput and TPOT against load]({args.out.stem}_load.png)", ""]
    write_text(args.out, "\n".join(lines))


if __name__ == "__main__":
    main()
