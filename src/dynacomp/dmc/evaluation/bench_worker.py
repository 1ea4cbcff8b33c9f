"""The worker process of ``dynacomp dmc bench``: measures one job (a JSON argument) and prints its
row as JSON, so every method's peak memory is its own (``bench.measure_in_worker`` starts it)."""

import json
import sys

from dynacomp.dmc.evaluation.bench import BenchConfig, measure, measure_paired

if __name__ == "__main__":
    job = json.loads(sys.argv[1])
    config = BenchConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in job["config"].items()})
    print(json.dumps(measure_paired(job["cr"], config) if job["method"] == "paired"
                     else measure(job["method"], job["cr"], config)))
