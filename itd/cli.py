"""The `itd` command line: parse options, call the library, print results. Exit codes: 0 clean, 1 contamination
found / check failed, 2 usage or input error. Every option can also be set as `ITD_<COMMAND>_<OPTION>`."""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

import click

from itd import __version__
from itd.errors import ITDError

__all__ = ["main", "run", "cli"]

EXIT_CLEAN, EXIT_FOUND, EXIT_USAGE = 0, 1, 2


def _err_console():
    from rich.console import Console

    return Console(stderr=True)


def _out_console():
    from rich.console import Console

    return Console(file=sys.stdout)


@contextlib.contextmanager
def _byte_progress(label: str, enabled: bool = True) -> Iterator[Any]:
    """A rich progress bar over bytes on stderr; yields a `(done, total)` callback."""
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=_err_console(),
        transient=False,
    ) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _load(path: str, fmt: str):
    from itd.data import load_benchmark

    return load_benchmark(path, format=fmt)


def _print_report(report, *, title: str, top: int = 10) -> None:
    from rich.table import Table

    out = _out_console()
    counts = Table(title=title)
    counts.add_column("label")
    counts.add_column("samples", justify="right")
    for label, n in report.counts().items():
        counts.add_row(label, str(n))
    out.print(counts)
    flagged = report.contaminated
    if not flagged:
        return
    table = Table(title=f"Top matches ({min(top, len(flagged))} of {len(flagged)})")
    for col in ("id", "label", "raw q/a", "numnorm q/a", "fuzzy", "best evidence"):
        table.add_column(col, overflow="fold")
    ranked = sorted(flagged, key=lambda r: -max((e.score for e in r.evidence), default=0.0))
    for r in ranked[:top]:
        rec = r.to_dict()
        cov = rec.get("coverage", {})
        fmt = lambda c: f"{c['question']:.2f}/{c['answer']:.2f}" if c else "-"  # noqa: E731
        fuzzy = rec.get("fuzzy")
        ev = r.evidence[0] if r.evidence else None
        table.add_row(
            r.sample.id,
            r.label,
            fmt(cov.get("raw")),
            fmt(cov.get("numnorm")),
            f"{max(fuzzy.values()):.0f}" if fuzzy else "-",
            f"{Path(ev.doc).name} [{ev.start}:{ev.end}] {ev.score:.0f}" if ev else "-",
        )
    out.print(table)


def _warn_skipped(stats: dict) -> None:
    """Tell the user on stderr how many malformed corpus lines were skipped, with the first few errors."""
    if stats.get("skipped_lines"):
        console = _err_console()
        console.print(f"[yellow]skipped {stats['skipped_lines']} malformed corpus line(s):[/yellow]", highlight=False)
        for message in stats["skipped_errors"][:5]:
            console.print(f"  {message}", highlight=False, markup=False)


def _parse_detectors(value: str) -> tuple[str, ...]:
    return tuple(v for v in (p.strip() for p in value.split(",")) if v)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="itd")
def cli() -> None:
    """itd: find benchmark items that leaked into training data, with evidence."""


@cli.command()
@click.argument("benchmark", type=click.Path())
@click.option("--corpus", "-c", multiple=True, required=True, help="Corpus file, directory or glob (repeatable).")
@click.option("--detector", "detectors", default="ngram,minhash", help="Comma-separated detectors.")
@click.option("--format", "fmt", default="auto", help="Benchmark format (auto, gsm8k, mmlu, jsonl, csv).")
@click.option("--n", type=click.IntRange(2, 64), default=13, help="n-gram length.")
@click.option("--n-short", type=click.IntRange(1, 64), default=8, help="n-gram length for short items.")
@click.option("--input-threshold", type=click.FloatRange(0, 1, min_open=True), default=0.4, help="Question coverage that marks the input contaminated.")
@click.option("--label-threshold", type=click.FloatRange(0, 1, min_open=True), default=0.4, help="Answer coverage that marks the label contaminated.")
@click.option("--fuzzy-min-score", type=click.FloatRange(0, 100), default=85.0, help="rapidfuzz score a fuzzy match needs.")
@click.option("--text-field", default="text", help="Text field of JSONL/parquet corpora.")
@click.option("--workers", "-j", type=click.IntRange(1, 512), default=1, help="Worker processes.")
@click.option("--skip-bad-lines", is_flag=True, help="Skip malformed corpus lines (counted and reported) instead of stopping.")
@click.option("--out", "-o", type=click.Path(dir_okay=False), help="Write the per-sample JSONL report here.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout instead of tables.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def scan(benchmark, corpus, detectors, fmt, n, n_short, input_threshold, label_threshold, fuzzy_min_score, text_field, workers, skip_bad_lines, out, as_json, quiet):
    """Scan CORPUS for the items of BENCHMARK; exit 1 if any item is found."""
    from itd.io import build_manifest
    from itd.scan import ScanConfig
    from itd.scan import scan as run_scan

    config = ScanConfig(
        detectors=_parse_detectors(detectors),
        n=n,
        n_short=n_short,
        input_threshold=input_threshold,
        label_threshold=label_threshold,
        fuzzy_min_score=fuzzy_min_score,
        text_field=text_field,
        workers=workers,
        skip_bad_lines=skip_bad_lines,
    )
    samples = _load(benchmark, fmt)
    with _byte_progress("scanning corpus", not quiet) as progress:
        report = run_scan(samples, list(corpus), config, progress=progress)
    _warn_skipped(report.stats)
    if out:
        manifest = build_manifest(command="scan", config={**config.to_dict(), "format": fmt}, inputs=[benchmark, *corpus])
        report.write_jsonl(out, manifest)
        _err_console().print(f"report written to {out}")
    if as_json:
        click.echo(json.dumps(report.summary(), indent=2))
    else:
        _print_report(report, title=f"{benchmark}: {len(samples)} samples")
    return EXIT_FOUND if report.contaminated else EXIT_CLEAN


@cli.group()
def index() -> None:
    """Build a persistent corpus n-gram index (for `itd check`)."""


@index.command("build")
@click.option("--corpus", "-c", multiple=True, required=True, help="Corpus file, directory or glob (repeatable).")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="Index directory.")
@click.option("--n", type=click.IntRange(2, 64), default=13, help="n-gram length.")
@click.option("--n-short", type=click.IntRange(1, 64), default=8, help="n-gram length for short items.")
@click.option("--text-field", default="text", help="Text field of JSONL/parquet corpora.")
@click.option("--skip-bad-lines", is_flag=True, help="Skip malformed corpus lines (counted and reported) instead of stopping.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def index_build(corpus, out, n, n_short, text_field, skip_bad_lines, quiet):
    """Index the n-grams of CORPUS into directory OUT."""
    from itd.index import build_index

    with _byte_progress("indexing corpus", not quiet) as progress:
        meta = build_index(
            list(corpus), out, n=n, n_short=n_short, text_field=text_field, skip_bad_lines=skip_bad_lines, progress=progress
        )
    _warn_skipped(meta)
    _err_console().print(f"index written to {out}: {meta['documents']} documents, {meta['bytes']} bytes")
    return EXIT_CLEAN


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path())
@click.option("--index", "index_path", required=True, type=click.Path(), help="Index directory from `itd index build`.")
@click.option("--format", "fmt", default="auto", help="Eval-set format (auto, gsm8k, mmlu, jsonl, csv).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
def check(files, index_path, fmt, as_json):
    """Check eval-set FILES against an index; exit 1 if any item appears in the indexed corpus."""
    from itd.index import NGramIndex
    from itd.index import check as run_check

    idx = NGramIndex(index_path)
    found: list[dict[str, Any]] = []
    for f in files:
        report = run_check(_load(f, fmt), idx)
        for r in report.contaminated:
            rec = r.to_dict()
            found.append({"file": f, "id": rec["id"], "line": rec["source"]["line"] if rec["source"] else None, "label": rec["label"], "coverage": rec["coverage"]})
    if as_json:
        click.echo(json.dumps({"files": list(files), "contaminated": found}, indent=2))
    elif found:
        for rec in found:
            c = rec["coverage"]
            click.echo(
                f"{rec['file']}:{rec['line']}: {rec['id']} {rec['label']} "
                f"(coverage raw {c['raw']['question']:.2f}/{c['raw']['answer']:.2f}, numnorm {c['numnorm']['question']:.2f}/{c['numnorm']['answer']:.2f})"
            )
    else:
        click.echo(f"{len(files)} file(s) clean")
    return EXIT_FOUND if found else EXIT_CLEAN


@cli.command()
@click.option("--out", "-o", type=click.Path(file_okay=False), help="Keep the generated data here (default: a temp dir).")
@click.option("--seed", type=int, default=0, help="Random seed of the generated data.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
def demo(out, seed, as_json):
    """Generate a benchmark and a corpus with planted leaks, scan it, and compare with the truth."""
    from rich.table import Table

    from itd.demo import EXPECTED_LABEL, build_demo
    from itd.scan import ScanConfig
    from itd.scan import scan as run_scan

    with contextlib.ExitStack() as stack:
        where = Path(out) if out else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="itd-demo-")))
        data = build_demo(where, seed=seed)
        samples = _load(str(data.benchmark), "auto")
        _err_console().print(f"demo data in {where}: {len(samples)} benchmark items, {len(data.truth)} planted leaks")
        with _byte_progress("scanning corpus") as progress:
            report = run_scan(samples, [data.corpus], ScanConfig(detectors=("ngram", "minhash")), progress=progress)
        if out:
            report.write_jsonl(where / "report.jsonl")
    rows, wrong = [], 0
    for r in report.results:
        kind = data.truth.get(r.sample.id, "not leaked")
        expected = EXPECTED_LABEL.get(kind, "clean")
        ok = expected == r.label
        wrong += not ok
        if kind != "not leaked" or not ok:
            rows.append((r.sample.id, kind, expected, r.label, ok))
    if as_json:
        click.echo(json.dumps({**report.summary(), "truth_mismatches": wrong}, indent=2))
    else:
        _print_report(report, title="itd demo: scan of a corpus with planted leaks")
        table = Table(title="Planted leaks vs. scan")
        for col in ("id", "planted as", "expected", "found", "ok"):
            table.add_column(col)
        for row in sorted(rows, key=lambda x: x[1]):
            table.add_row(*row[:4], "yes" if row[4] else "[red]NO[/red]")
        _out_console().print(table)
        _out_console().print(f"{len(report.results) - wrong}/{len(report.results)} items labelled as planted.")
    return EXIT_CLEAN if wrong == 0 else EXIT_FOUND


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI and map errors to exit codes without tracebacks."""
    try:
        rc = cli.main(args=argv, prog_name="itd", auto_envvar_prefix="ITD", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return EXIT_USAGE
    except ITDError as exc:
        click.echo(f"error: {exc}", err=True)
        return EXIT_USAGE
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    except BrokenPipeError:
        return EXIT_CLEAN
    return rc if isinstance(rc, int) else EXIT_CLEAN


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
