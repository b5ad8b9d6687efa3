"""Terminal rendering for the command line: the stdout and stderr consoles, rich progress bars, and the tables
and lines each command prints. Library code never writes to the terminal; only `itd.cli.commands` calls these."""

from __future__ import annotations

import contextlib
import json
import math
import sys
from pathlib import Path
from typing import Any, Iterator

import click

__all__ = [
    "echo_json",
    "err_console",
    "PIPE_WIDTH",
    "out_console",
    "progress_bars",
    "byte_progress",
    "FIT_LABELS",
    "scan_progress",
    "print_report",
    "print_breakdown",
    "warn_skipped",
    "plural",
    "read_summary",
    "per_benchmark",
    "layout_summary",
    "say_processed",
    "fmt_ci",
    "print_run",
    "ARM_NAMES",
    "print_ground_truth",
    "stage_progress",
    "print_detection",
    "rewrite_progress",
    "count_table",
    "print_rewrite",
]


def echo_json(obj: Any) -> None:
    """Print `obj` as indented JSON on stdout, with credentials in URLs redacted."""
    from itd.core.io import redact_urls

    click.echo(json.dumps(redact_urls(obj), indent=2, default=str))



def err_console():
    from rich.console import Console

    return Console(stderr=True)



PIPE_WIDTH = 10_000  # "as wide as the content": tables written to a file or pipe are never wrapped or cut



def out_console():
    """The results console on stdout: the terminal's width on a terminal; redirected, as wide as the content
    (unless COLUMNS says otherwise), so `itd run ... > run.out` keeps every cell whole."""
    import os

    from rich.console import Console

    console = Console(file=sys.stdout)
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        console.width = PIPE_WIDTH
    return console



def progress_bars(*columns: Any):
    """A rich progress display on stderr: description, bar, then `columns`."""
    from rich.progress import BarColumn, Progress, TextColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), *columns, console=err_console())



@contextlib.contextmanager
def byte_progress(label: str, enabled: bool = True) -> Iterator[Any]:
    """A rich progress bar over bytes on stderr; yields a `(done, total)` callback."""
    if not enabled:
        yield None
        return
    from rich.progress import DownloadColumn, TimeRemainingColumn, TransferSpeedColumn

    with progress_bars(DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn()) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update



FIT_LABELS = {"semantic": "embedding the benchmark (semantic)"}



@contextlib.contextmanager
def scan_progress(enabled: bool = True) -> Iterator[tuple[Any, Any]]:
    """The progress of a corpus scan on stderr: a bar over the bytes read, and one over the work of a detector
    whose fitting takes long (the semantic detector embedding the benchmark: texts), each with its total; yields
    the `(done, total)` byte callback and the `(detector, done, total)` fit callback."""
    if not enabled:
        yield None, None
        return
    from rich.progress import DownloadColumn, ProgressColumn, TimeRemainingColumn, TransferSpeedColumn
    from rich.text import Text

    class Counted(ProgressColumn):
        """`bytes_column` for the corpus bar; for a bar with a `unit`, `done/total unit` (or `n unit/s`)."""

        def __init__(self, bytes_column: ProgressColumn, speed: bool = False):
            super().__init__()
            self.bytes_column, self.speed = bytes_column, speed

        def render(self, task: Any) -> Text:
            unit = task.fields.get("unit")
            if unit is None:
                return self.bytes_column.render(task)
            if self.speed:
                return Text("" if task.speed is None else f"{task.speed:,.0f} {unit}/s", style="progress.data.speed")
            total = "?" if task.total is None else f"{int(task.total):,}"
            return Text(f"{int(task.completed):,}/{total} {unit}", style="progress.download")

    with progress_bars(Counted(DownloadColumn()), Counted(TransferSpeedColumn(), speed=True), TimeRemainingColumn()) as bar:
        fits: dict[str, Any] = {}
        corpus: list[Any] = []

        def on_fit(detector: str, done: int, total: int) -> None:
            if detector not in fits:
                fits[detector] = bar.add_task(FIT_LABELS.get(detector, f"fitting {detector}"), total=total, unit="texts")
            bar.update(fits[detector], completed=done, total=total)

        def on_bytes(done: int, total: int) -> None:
            if not corpus:
                corpus.append(bar.add_task("scanning corpus", total=total))
            bar.update(corpus[0], completed=done, total=total)

        yield on_bytes, on_fit



def print_report(report, *, title: str, top: int = 10) -> None:
    from rich.markup import escape
    from rich.table import Table

    out = out_console()
    counts = Table(title=title)
    counts.add_column("label")
    counts.add_column("samples", justify="right")
    for label, n in report.counts().items():
        counts.add_row(label, str(n))
    out.print(counts)
    flagged = report.contaminated
    if not flagged:
        return
    print_breakdown(report, top)
    table = Table(title=f"Top matches ({min(top, len(flagged))} of {len(flagged)})",
                  caption="n-gram coverage: share of the question/answer tokens found in the corpus (verbatim, and "
                          "with numbers masked); similarity: rapidfuzz, 0-100; -: that detector found nothing")
    minhash = "minhash" in (report.config.get("detectors") or ())
    for col in ("id", "label", "n-gram coverage q/a", "same, numbers masked", *(["minhash similarity"] * minhash),
                "best evidence: document [characters] similarity (detector)"):
        table.add_column(escape(col), overflow="fold")
    ranked = sorted(flagged, key=lambda r: -max((e.score for e in r.evidence), default=0.0))
    for r in ranked[:top]:
        rec = r.to_dict()
        cov = rec.get("coverage", {})
        fmt = lambda c: f"{c['question']:.2f}/{c['answer']:.2f}" if c else "-"  # noqa: E731
        fuzzy = max((rec.get("fuzzy") or {}).values(), default=0.0)  # the minhash detector's best candidate
        ev = r.evidence[0] if r.evidence else None
        table.add_row(
            escape(r.sample.id),
            r.label,
            fmt(cov.get("raw")),
            fmt(cov.get("numnorm")),
            *([f"{fuzzy:.0f}" if fuzzy > 0 else "-"] * minhash),
            escape(f"{Path(ev.doc).name} [{ev.start}:{ev.end}] {ev.score:.0f} ({ev.detector})") if ev else "-",
        )
    out.print(table)



def print_breakdown(report, top: int) -> None:
    """Contamination per subject (or per benchmark file), most contaminated first, when there are several."""
    from rich.table import Table

    by = "subject" if any(r.sample.subject for r in report.results) else "file"
    groups = report.breakdown(by)
    if len(groups) < 2:
        return
    ranked = sorted(groups.items(), key=lambda kv: (-kv[1]["contaminated_share"], kv[0]))
    shown = [kv for kv in ranked if kv[1]["contaminated_share"] > 0][:top]
    table = Table(title=f"Contamination per {by} ({len(shown)} of {len(groups)}, most contaminated first; all in --json)")
    for col in (by, "samples", "clean", "input", "input+label", "contaminated"):
        table.add_column(col, justify="left" if col == by else "right", overflow="fold")
    for name, g in shown:
        labels = g["labels"]
        table.add_row(Path(name).name if by == "file" else name, str(g["samples"]), *(str(v) for v in labels.values()),
                      f"{g['contaminated_share']:.1%}")
    out_console().print(table)



def warn_skipped(stats: dict) -> None:
    """Tell the user on stderr how many malformed corpus lines were skipped (with the first few errors) and
    which corpus files held no documents."""
    from itd.core.io import redact_text

    console = err_console()
    if stats.get("skipped_lines"):
        skipped = stats["skipped_lines"]
        lines = skipped + stats.get("documents", 0)
        console.print(f"[yellow]skipped {skipped:,} malformed corpus line(s) of {lines:,} ({skipped / lines:.2%}); "
                      "the first errors:[/yellow]", highlight=False, soft_wrap=True)
        for message in stats["skipped_errors"][:5]:
            console.print(f"  {redact_text(message)}", highlight=False, markup=False, soft_wrap=True)
    if stats.get("empty_files"):
        names = stats.get("empty_file_names") or []
        console.print(f"[yellow]{stats['empty_files']:,} corpus file(s) held no documents:[/yellow]", highlight=False, soft_wrap=True)
        for name in names[:5]:
            console.print(f"  {redact_text(name)}", highlight=False, markup=False, soft_wrap=True)



def plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"



def read_summary(stats: dict) -> str:
    """What a corpus verdict stands on, in one line: documents, bytes, files and lines skipped."""
    from rich.filesize import decimal

    line = (f"read {plural(stats.get('documents', 0), 'document')} ({decimal(stats.get('bytes') or 0)}) from "
            f"{plural(stats.get('files', 0), 'file')}; {plural(stats.get('skipped_lines', 0), 'line')} skipped")
    if stats.get("empty_files"):
        line += f"; {plural(stats['empty_files'], 'file')} without documents"
    return line



def per_benchmark(names, reports) -> dict[str, dict]:
    """Per benchmark of a multi-benchmark scan: samples, label counts and contaminated ids."""
    out = {}
    for name, rep in zip(names, reports):
        summary = rep.summary()
        summary.pop("stats")
        out[name] = summary
    return out



def layout_summary(stats: dict) -> str:
    """The record layouts a corpus was read in, one line each: files, documents and records per field."""
    lines = []
    for name, entry in (stats.get("layouts") or {}).items():
        fields = ", ".join(f"{f} {c:,}" for f, c in entry["fields"].items())
        lines.append(f"layout {name}: {plural(entry['files'], 'file')}, {plural(entry['documents'], 'document')}"
                     + (f" (records with text per field: {fields})" if fields else ""))
    return "\n".join(lines)



def say_processed(stats: dict, verb: str) -> None:
    """One stderr line: how many bytes, shards, workers (and nodes) a corpus pass processed, and how fast."""
    nodes = stats.get("nodes") or 0
    where = f"engine {stats.get('engine', 'local')}" + (f", {nodes} nodes" if nodes > 1 else "")
    at_once = f", {stats['parallelism']} at a time" if stats.get("parallelism") else ""
    line = (f"{verb} {stats.get('bytes', 0) / 1e6:,.1f} MB: {stats.get('shards', 0)} shard(s) on "
            f"{stats.get('workers', 0)} worker process(es){at_once} ({where}) in {stats.get('seconds', 0):.1f} s")
    if stats.get("seconds"):
        line += f", {stats.get('bytes', 0) / 1e6 / stats['seconds']:,.1f} MB/s"
    if stats.get("retries"):
        line += f"; {stats['retries']} shard run(s) repeated after a worker failure"
    err_console().print(line, highlight=False, markup=False)



def fmt_ci(fig: dict | None, pct: bool = True) -> str:
    """A figure of `itd.evaluation.Estimate.to_dict` as "value [low, high]" (percent, or plain with `pct` off)."""
    if not fig or fig.get("value") is None:
        return "n/a" + (f" ({fig['reason']})" if fig and fig.get("reason") else "")
    show = (lambda x: f"{100 * x:.1f}%") if pct else (lambda x: f"{x:.2f}")
    low, high = fig.get("ci") or (None, None)
    return show(fig["value"]) + (f" [{show(low)}, {show(high)}]" if low is not None else "")



def print_run(result, title: str) -> None:
    """The terminal report of a pipeline run: detection, rewriting, accuracy with CIs, headline figures."""
    from rich.table import Table

    out = out_console()
    summary = result.summary
    if summary.get("headline"):
        out.print(summary["headline"], highlight=False)
    det = summary.get("detection")
    if det:
        table = Table(title=f"{title}: detection")
        for col in ("items", "flagged", "mode", "decision probe", "set-level p", "AUROC leaked vs unseen"):
            table.add_column(col)
        test = det.get("set_test") or {}
        truth = ((det.get("truth") or {}).get("methods") or {}).get(det.get("decision"), {})
        table.add_row(str(summary["benchmark"]["items"]), str(summary["flagged"]), str(det.get("mode", "scan")),
                      str(det.get("decision", "-")), f"{test['p_value']:.2g}" if test.get("p_value") is not None else "-",
                      f"{truth['auroc']:.3f}" if truth.get("auroc") is not None else "-")
        out.print(table)
    out.print(count_table(f"{title}: rewriting ({summary['rewrite'].get('method')})", "status", summary["rewrite"]["counts"]))
    ev = summary.get("evaluation")
    if not ev:
        return
    subsets = ("original", "decontaminated", "flagged_before", "flagged_after", "unflagged")
    table = Table(title=f"{title}: accuracy (95% bootstrap CI)")
    table.add_column("model")
    for sub in subsets:
        table.add_column(sub.replace("_", " "))
    for role, by_subset in ev["accuracy"].items():
        name = summary["models"].get(role) or role
        table.add_row(f"{role} ({Path(name).name})", *(fmt_ci(by_subset.get(sub)) for sub in subsets))
    out.print(table)
    if ev.get("by_label"):
        by_label = Table(title=f"{title}: accuracy by contamination label (corpus scan) and by model-side flag (95% CI)")
        for col in ("items", "n", "before", "after"):
            by_label.add_column(col)
        for group, fig in ev["by_label"].items():
            by_label.add_row(group.replace("_", " "), str(fig["before"]["n"]), fmt_ci(fig["before"]), fmt_ci(fig["after"]))
        out.print(by_label)
    figures = Table(title=f"{title}: what the score was made of")
    figures.add_column("figure")
    figures.add_column("value [95% CI]")
    for key, label, pct in (("inflation", "inflation (original - decontaminated)", True),
                            ("true_inflation", "true inflation (vs clean twin, original)", True),
                            ("residual_inflation", "residual inflation (vs clean twin, decontaminated)", True),
                            ("inflation_removed", "share of inflation removed", True),
                            ("fidelity", "fidelity (clean twin agrees with itself)", False),
                            ("resistance", "resistance (twins agree after rewriting)", False)):
        if key in ev:
            figures.add_row(label, fmt_ci(ev[key], pct))
    out.print(figures)
    if ev.get("ground_truth"):
        print_ground_truth(ev["ground_truth"], title)
    unparsed = {f"{role} ({which})": ids for role, sets in (ev.get("unparsed") or {}).items() for which, ids in sets.items()}
    for where, ids in unparsed.items():
        out.print(f"unparseable answers of {where}, counted wrong: {', '.join(ids)}")



ARM_NAMES = {"none": "no decontamination", "itd": "rewrite the flagged items (ITD)", "all": "rewrite every item"}



def print_ground_truth(gt: dict, title: str) -> None:
    """The lab's ground truth: the leak's effect, and each way of decontaminating side by side."""
    from rich.table import Table

    out = out_console()
    table = Table(title=f"{title}: ground truth (lab twins; 95% CI over items and replicas)")
    table.add_column("figure")
    table.add_column("value [95% CI]")
    table.add_row("true inflation (DiD: gain on leaked minus gain on unseen)", fmt_ci(gt["true_inflation"]))
    table.add_row("contaminated - clean twin on leaked items", fmt_ci(gt["leaked_gain"]))
    table.add_row("contaminated - clean twin on unseen items (lab noise)", fmt_ci(gt["unseen_gap"]))
    flags = gt.get("flags")
    if flags:
        table.add_row(f"leaked items flagged ({flags['leaked_flagged']} of {flags['leaked']})", fmt_ci(flags["recall"]))
        table.add_row(f"unseen items flagged ({flags['unseen_flagged']} of {flags['unseen']})",
                      fmt_ci(flags["false_flag_rate"]))
    table.add_row("fidelity ceiling (clean twin, two independent rewrites)", fmt_ci(gt["ceiling"], pct=False))
    table.add_row("chance agreement at those accuracies", fmt_ci(gt["chance"], pct=False))
    out.print(table)
    arms = Table(title=f"{title}: decontamination compared")
    for col in ("set", "contaminated", "clean twin", "residual inflation", "inflation removed", "fidelity",
                "fidelity / ceiling", "clean twin: rewritten - original"):
        arms.add_column(col)
    for arm, figs in gt["arms"].items():
        arms.add_row(ARM_NAMES.get(arm, arm), fmt_ci(figs["accuracy_model"]), fmt_ci(figs["accuracy_clean"]),
                     fmt_ci(figs["residual_inflation"]), fmt_ci(figs["inflation_removed"]),
                     fmt_ci(figs["fidelity"], pct=False) if arm != "none" else "-",
                     fmt_ci(figs.get("fidelity_ratio"), pct=False) if arm != "none" else "-",
                     fmt_ci(figs["difficulty"]) if arm != "none" else "-")
    out.print(arms)



@contextlib.contextmanager
def stage_progress(labels: dict[str, str], enabled: bool = True) -> Iterator[Any]:
    """Rich progress bars on stderr, one per stage (described by `labels`); yields a `(stage, done, total)`
    callback."""
    if not enabled:
        yield None
        return
    from rich.progress import MofNCompleteColumn, TimeElapsedColumn, TimeRemainingColumn

    with progress_bars(MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn()) as bar:
        tasks: dict[str, Any] = {}

        def update(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(labels.get(stage, stage), total=total)
            bar.update(tasks[stage], completed=done, total=total)

        yield update



def print_detection(report) -> None:
    import numpy as np
    from rich.table import Table

    out = out_console()
    summary = report.summary()
    table = Table(title=f"itd detect: {summary['items']} items under {report.model}")
    for col in ("probe", "benchmark median", "set-level p", "top-k p", "AUROC vs reference", "AUROC leaked vs unseen",
                "TPR@5%FPR"):
        table.add_column(col)
    truth = (report.truth or {}).get("methods", {})
    within = (report.truth or {}).get("within_letter", {})
    for m in report.config.methods:
        values = [v for it in report.items if math.isfinite(v := it.scores[m])]
        test, sparse = report.set_tests.get(m), report.sparse_tests.get(m)
        controlled, controlled_sparse = report.controlled_set_tests.get(m), report.controlled_sparse_tests.get(m)
        t, w = truth.get(m, {}), within.get(m)
        table.add_row(
            m + (" (decision)" if m == report.config.decision else ""),
            f"{np.median(values):.4g}" if values else "-",
            (f"{test.p_value:.2e}" if test else "-") + (f" ({controlled.p_value:.2e} controlled)" if controlled else ""),
            (f"{sparse.p_value:.2e} (k = {sparse.top_k})" if sparse else "-")
            + (f" ({controlled_sparse.p_value:.2e} controlled)" if controlled_sparse else ""),
            f"{test.auroc:.3f} [{test.auroc_ci[0]:.3f}, {test.auroc_ci[1]:.3f}]" if test else "-",
            (f"{t['auroc']:.3f}" if t else "-") + (f" ({w['auroc']:.3f} within letter)" if w else ""),
            (f"{t['tpr_at_5pct_fpr']:.2f}" if t else "-") + (f" ({w['tpr_at_5pct_fpr']:.2f})" if w else ""),
        )
    if report.combined_set is not None:
        t = truth.get("combined", {})
        table.add_row(
            "combined, Cauchy" + (" (decision)" if report.config.decision == "combined" else ""), "-",
            f"{report.combined_set['p_value']:.2e}", "-",
            "drivers: " + (", ".join(report.combined_set["drivers"]) or "none"),
            f"{t['auroc']:.3f}" if t else "-", f"{t['tpr_at_5pct_fpr']:.2f}" if t else "-",
        )
    out.print(table)
    if report.mode == "fdr":
        set_p = report.set_p_value
        out.print(f"flagged {summary['flagged']} of {summary['items']} items at FDR {report.config.fdr} "
                  f"(decision probe {report.config.decision}, reference set of {report.reference_size} items)"
                  + (f"; set-level p {set_p:.2e} (Mann-Whitney and top-k)" if set_p is not None else ""))
        if report.verdict == "not_detected" and (line := _detectable_line(report)):
            out.print(line)
    elif report.mode == "threshold":
        out.print(f"flagged {summary['flagged']} of {summary['items']} items with {report.config.decision} > {report.config.threshold}")
    else:
        out.print("no reference set and no threshold: scores only, nothing can be decided (give --reference-set or --threshold)")
    if report.reference_overlap:
        out.print(f"{report.reference_overlap} reference items were benchmark items too and were left out of the "
                  "reference set (an item compared with itself hides its own leak)")
    if report.untested and report.mode != "scores":
        out.print(f"read nothing a test could use, so left out of every test and verdict: {', '.join(report.untested)}")
    if report.permutation is not None:
        perm = report.permutation
        out.print(f"option-order test: original order ranked first for {perm.count} of {perm.n_items} items "
                  f"(chance {perm.expected:.1f}), p = {perm.p_value:.2e}")
    if report.codec is not None:
        c = report.codec
        line = (f"CoDeC: confidence falls behind in-context items for {fmt_ci({'value': c.score, 'ci': c.score_ci})} "
                f"of the benchmark items ({c.shots} shots)")
        if c.reference_score is not None:
            p = "n/a (no item had tokens to score)" if c.p_value is None else f"{c.p_value:.2e}"
            line += (f", {fmt_ci({'value': c.reference_score, 'ci': c.reference_ci})} of the reference set's; "
                     f"p = {p} (one-sided Mann-Whitney)")
        out.print(line)
    if "flags" in (report.truth or {}):
        f = report.truth["flags"]
        out.print(f"flags against the truth: recall {f['recall']}, precision {f['precision']} "
                  f"({f['true_positives']} leaked and {f['false_positives']} unseen items flagged)")
    verdict = {"contaminated": "[red]contaminated[/red]", "not_detected": "[green]no contamination detected[/green]",
               "undecided": "[yellow]undecided[/yellow] (exit 2)"}[report.verdict]
    out.print(f"verdict: {verdict}")



def _detectable_line(report) -> str | None:
    """What a verdict of no contamination leaves open: the smallest leak the top-k test could have seen (None
    without a top-k test of the decision)."""
    decision = report.config.decision
    tests = [t for m, t in report.sparse_tests.items() if decision in (m, "combined")]
    if not tests:
        return None
    sizes = [t.detectable for t in tests if t.detectable is not None]
    if not sizes:
        return (f"the top-k test could not reach p < {report.config.alpha} with {report.reference_size} reference "
                "items, whatever the scores: give more reference items")
    line = (f"a leak of {min(sizes)} or more items scored above every reference item would have given p < "
            f"{report.config.alpha} in the top-k test")
    if decision == "combined":
        line += " of the probe that sees it (the combined verdict spreads alpha over its tests and needs more)"
    return line + "; a leak whose items score lower needs more of them"


@contextlib.contextmanager
def rewrite_progress(enabled: bool = True) -> Iterator[Any]:
    """One rich bar per rewrite stage with the running counters; yields `(stage, done, total, counters)`."""
    if not enabled:
        yield None
        return
    from rich.progress import MofNCompleteColumn, TextColumn, TimeElapsedColumn

    with progress_bars(MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("{task.fields[counters]}")) as bar:
        tasks: dict[str, Any] = {}

        def update(stage: str, done: int, total: int, counters: dict[str, Any]) -> None:
            text = f"rewritten {counters.get('rewritten', 0)}, pending {counters.get('pending', 0)}"
            if "calls" in counters:
                text += (f" | calls {counters['calls']}, cached {counters.get('cache_hits', 0)}, "
                         f"tokens {counters.get('prompt_tokens', 0) + counters.get('completion_tokens', 0):,}")
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total, counters=text)
            bar.update(tasks[stage], completed=done, total=total, counters=text)

        yield update



def count_table(title: str, label: str, counts: dict[str, int]):
    """A two-column rich table: `label`, then the number of items."""
    from rich.table import Table

    table = Table(title=title, min_width=len(title))
    table.add_column(label)
    table.add_column("items", justify="right")
    for key, n in counts.items():
        table.add_row(key, str(n))
    return table



def print_rewrite(report, out: str, log: str) -> None:
    summary = report.summary()
    console = out_console()
    console.print(count_table(f"itd rewrite ({summary['method']}): {summary['items']} items", "status", summary["counts"]))
    if summary["rounds_needed"]:
        console.print("rounds needed: " + ", ".join(f"{n} item(s) in {r}" for r, n in summary["rounds_needed"].items()))
    if summary["rejection_reasons"]:
        console.print(count_table("rejected: reason of the last attempt", "reason", summary["rejection_reasons"]))
    if summary.get("rejections_by_check"):
        console.print(count_table("failed checks, every attempt", "check", summary["rejections_by_check"]))
    if report.changes_difficulty:
        console.print("[yellow]note: this rewriter changes difficulty (MMLU-CF option replacement); scores are not "
                      "comparable to the original set[/yellow]")
    console.print(f"rewritten set: {out}\nper-item log: {log}")
