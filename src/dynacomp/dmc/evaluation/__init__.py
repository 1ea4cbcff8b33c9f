"""Evaluation and benchmarks of cache policies: ``harness`` (perplexity and passkey at equal
memory), ``cli`` (``dmc eval`` / ``dmc passkey``), ``bench`` (decode throughput, max batch) and its
subprocess ``bench_worker``."""
