"""`report.html`: one self-contained page (inline CSS, plots as inline SVG data URIs, no scripts, no network)
that shows a run's headline figures, score distributions, ROC curves, accuracy with confidence intervals and the
most suspicious items with their evidence and rewrites side by side.

Input is the run summary and the per-item records of the pipeline; every part is optional and a section whose
data are absent is replaced by one line saying why. All user text is HTML-escaped. Plots are drawn with
`matplotlib.figure.Figure` on an Agg canvas, never through pyplot, so no global figure state leaks between calls.

Over 600 lines because the report is one self-contained page: each section's HTML and plot next to the
others, with one escaping rule.
"""

from __future__ import annotations

import base64
import difflib
import html
import io
import math
import os
import re
from typing import Any, Mapping, Sequence

import numpy as np

from itd.core.errors import require
from itd.core.io import atomic_write

__all__ = ["render_html_report", "write_html_report", "roc_curve", "top_items"]

_SUBSETS = ("original", "decontaminated", "flagged_before", "flagged_after", "unflagged")
_HEADLINES = (
    ("inflation", "Inflation", "accuracy on the original items minus accuracy on the decontaminated ones"),
    ("true_inflation", "True inflation", "the same gap measured on the model's clean twin as reference"),
    ("residual_inflation", "Residual inflation", "inflation left after decontamination"),
    ("inflation_removed", "Inflation removed", "share of the inflation the rewrites took away"),
    ("fidelity", "Fidelity", "how well rewrites keep the difficulty of the originals (clean model)"),
    ("resistance", "Resistance", "how far rewrites resist the contaminated model's memory"),
)
_SCAN_RANK = {"input_and_label_contaminated": 0, "input_contaminated": 1, "clean": 2}
_LABELS = {"input_and_label_contaminated": "input + label found", "input_contaminated": "input found"}
_COLORS = {"benchmark": "#1f77b4", "leaked": "#d62728", "unseen": "#2ca02c", "reference": "#7f7f7f"}

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1240px;padding:16px 24px;color:#222;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:26px 0 8px;border-bottom:1px solid #ddd;padding-bottom:3px}
.meta{color:#555;font-size:13px}.absent{color:#777;font-style:italic}
.headline{font-size:16px;font-weight:600;margin:6px 0 10px;padding:8px 12px;border-left:4px solid #1a73e8;background:#f3f7fe}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:10px 0}
.card{border:1px solid #ddd;border-radius:6px;padding:8px 12px;min-width:150px;max-width:230px;background:#fafafa}
.card .v{font-size:20px;font-weight:600}.card .l{font-size:12px;color:#555}.card .ci{font-size:12px;color:#333}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ddd;padding:4px 6px;vertical-align:top;text-align:left}
th{background:#f2f2f2}table.items{table-layout:fixed;width:100%}table.items td{overflow-wrap:anywhere}
table.items td.id{overflow-wrap:normal;word-break:keep-all;hyphens:none}table.items td.id .small{overflow-wrap:anywhere}
.plots{display:flex;flex-wrap:wrap;gap:12px}.plots img{max-width:100%;border:1px solid #eee}
mark{background:#ffe08a;padding:0 1px}mark.del{background:#ffc9c9}
.ev{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;white-space:pre-wrap;background:#f7f7f7;padding:3px}
.small{font-size:12px;color:#555}.ok{color:#1a7f37}.bad{color:#c62828}
details summary{cursor:pointer;color:#555;font-size:12px}
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _num(value: Any) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _fmt(value: Any, digits: int = 3, sign: bool = False) -> str:
    x = _num(value)
    if x is None:
        return "–"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def _fmt_p(value: Any) -> str:
    x = _num(value)
    return "–" if x is None else (f"{x:.2e}" if 0 < x < 1e-3 else f"{x:.4f}")


# ---------------------------------------------------------------------------------------------- plotting
def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _img(fig, alt: str) -> str:
    """The figure as an <img> holding an SVG data URI (isolated documents, so glyph ids never collide)."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": "itd", "svg.fonttype": "path"}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    svg = re.sub(r"^<\?xml[^>]*>\s*<!DOCTYPE[^>]*>\s*", "", buf.getvalue())
    data = base64.b64encode(svg.encode("utf-8")).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/svg+xml;base64,{data}">'


def roc_curve(positive: Sequence[float], negative: Sequence[float]) -> tuple[np.ndarray, np.ndarray, float]:
    """ROC points (FPR, TPR) of the rule "flag when score >= t" over every distinct score, and the trapezoid
    area under them (ties form one diagonal step, so the area equals the Mann-Whitney AUROC)."""
    pos = np.asarray(positive, dtype=float)
    neg = np.asarray(negative, dtype=float)
    pos, neg = pos[np.isfinite(pos)], neg[np.isfinite(neg)]
    if not pos.size or not neg.size:
        raise ValueError("an ROC curve needs at least one finite positive and one finite negative score")
    scores = np.concatenate([pos, neg])
    labels = np.concatenate([np.ones(pos.size), np.zeros(neg.size)])
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    last = np.r_[np.flatnonzero(np.diff(scores) != 0), scores.size - 1]  # last index of each tie group
    tps = np.cumsum(labels)[last]
    fps = (last + 1) - tps
    tpr = np.r_[0.0, tps / pos.size]
    fpr = np.r_[0.0, fps / neg.size]
    area = float(np.sum((fpr[1:] - fpr[:-1]) * (tpr[1:] + tpr[:-1]) / 2.0))
    return fpr, tpr, area


def _item_scores(items: Sequence[Mapping], method: str, truth: str | None = None) -> np.ndarray:
    out = []
    for it in items:
        det = it.get("detection") or {}
        if truth is not None and it.get("truth") != truth:
            continue
        x = _num((det.get("scores") or {}).get(method))
        if x is not None:
            out.append(x)
    return np.asarray(out, dtype=float)


def _methods(items: Sequence[Mapping], summary: Mapping) -> list[str]:
    found: list[str] = []
    for m in (summary.get("detection") or {}).get("methods") or []:
        if m not in found:
            found.append(m)
    for it in items:
        for m in ((it.get("detection") or {}).get("scores") or {}):
            if m not in found:
                found.append(m)
    return [m for m in found if _item_scores(items, m).size]


def _decision(summary: Mapping, items: Sequence[Mapping]) -> str | None:
    methods = _methods(items, summary)
    wanted = (summary.get("detection") or {}).get("decision") or "minkpp"
    return wanted if wanted in methods else (methods[0] if methods else None)


def _distribution_plot(summary: Mapping, items: Sequence[Mapping], method: str) -> tuple[str, str]:
    ref = ((summary.get("detection") or {}).get("reference_scores") or {}).get(method)
    ref = np.asarray([x for x in (ref or []) if _num(x) is not None], dtype=float)
    leaked, unseen = _item_scores(items, method, "leaked"), _item_scores(items, method, "unseen")
    groups = []
    if leaked.size and unseen.size:
        groups += [("benchmark: leaked", leaked, _COLORS["leaked"]), ("benchmark: unseen", unseen, _COLORS["unseen"])]
        rest = _item_scores([it for it in items if it.get("truth") not in ("leaked", "unseen")], method)
        if rest.size:
            groups.append(("benchmark: no truth", rest, _COLORS["benchmark"]))
    else:
        groups.append(("benchmark", _item_scores(items, method), _COLORS["benchmark"]))
    if ref.size:
        groups.append(("reference set", ref, _COLORS["reference"]))
    allv = np.concatenate([g[1] for g in groups])
    smallest = min(g[1].size for g in groups)
    bins = np.histogram_bin_edges(allv, bins=int(np.clip(np.sqrt(smallest) * 2.5, 8, 30)))
    fig = _figure(7.2, 3.6)
    ax = fig.add_subplot()
    for label, values, color in groups:
        ax.hist(values, bins=bins, density=True, histtype="stepfilled", alpha=0.25, color=color)
        ax.hist(values, bins=bins, density=True, histtype="step", lw=1.6, color=color, label=f"{label} (n={values.size})")
    ax.set_xlabel(f"{method} score (higher = more likely leaked)")
    ax.set_ylabel("density")
    ax.set_title(f"Distribution of the decision score ({method})")
    ax.legend(fontsize=8)
    note = "" if ref.size else "No reference-set scores in this run: only the benchmark distribution is shown."
    return _img(fig, f"histogram of {method} scores"), note


def _roc_plot(items: Sequence[Mapping], methods: Sequence[str]) -> str | None:
    curves = []
    for m in methods:
        pos, neg = _item_scores(items, m, "leaked"), _item_scores(items, m, "unseen")
        if pos.size and neg.size:
            curves.append((m, *roc_curve(pos, neg), pos.size, neg.size))
    if not curves:
        return None
    fig = _figure(5.0, 4.4)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="#999")
    for m, fpr, tpr, area, n_pos, n_neg in curves:
        ax.plot(fpr, tpr, lw=1.6, drawstyle="default", label=f"{m}: AUROC {area:.3f}")
    ax.set_xlim(0, 1), ax.set_ylim(0, 1.01)
    ax.set_xlabel("false-positive rate (unseen items flagged)")
    ax.set_ylabel("true-positive rate (leaked items flagged)")
    ax.set_title(f"ROC per probe ({curves[0][4]} leaked, {curves[0][5]} unseen)")
    ax.legend(fontsize=8, loc="lower right")
    return _img(fig, "ROC curves per probe")


def _ci(figure: Mapping) -> tuple[float | None, float | None]:
    """The interval of a figure (`itd.evaluation.Estimate.to_dict`: ``"ci": [low, high]``)."""
    ci = figure.get("ci") or (None, None)
    return _num(ci[0]), _num(ci[1])


def _accuracy_plot(accuracy: Mapping, title: str = "Accuracy per model and subset",
                   order: Sequence[str] = _SUBSETS) -> str | None:
    """Bars with 95% CIs: one colour per key of `accuracy` (a model, or before/after), one group per subset."""
    roles = [r for r in accuracy if isinstance(accuracy.get(r), Mapping)]
    subsets = [s for s in order if any(_num((accuracy[r].get(s) or {}).get("value")) is not None for r in roles)]
    subsets += sorted({s for r in roles for s in accuracy[r] if s not in order
                       and _num((accuracy[r].get(s) or {}).get("value")) is not None})
    if not roles or not subsets:
        return None
    fig = _figure(min(7.2, 2.0 + 1.0 * len(subsets)), 3.8)
    ax = fig.add_subplot()
    width = 0.8 / len(roles)
    for i, role in enumerate(roles):
        xs, ys, err = [], [], [[], []]
        for j, s in enumerate(subsets):
            cell = accuracy[role].get(s) or {}
            acc = _num(cell.get("value"))
            if acc is None:
                continue
            lo, hi = _ci(cell)
            xs.append(j - 0.4 + width * (i + 0.5))
            ys.append(acc)
            err[0].append(max(0.0, acc - lo) if lo is not None else 0.0)
            err[1].append(max(0.0, hi - acc) if hi is not None else 0.0)
        ax.bar(xs, ys, width * 0.92, yerr=err, capsize=3, label=role, error_kw={"lw": 1})
        for x, y in zip(xs, ys):
            ax.text(x, 0.015, f"{y:.2f}", ha="center", va="bottom", fontsize=7, color="white", fontweight="bold")
    ax.set_xticks(range(len(subsets)), [s.replace("_", "\n").replace(": ", "\n") for s in subsets], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy (95% CI)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _img(fig, title.lower() + " (bars with confidence intervals)")


# ---------------------------------------------------------------------------------------------- items table
def top_items(items: Sequence[Mapping], method: str | None, top: int = 20) -> list[Mapping]:
    """The `top` most suspicious items: by decision p-value ascending then score descending when any item was
    detected, else by scan label (label and answer found first) then best evidence score."""
    if any(it.get("detection") for it in items):
        def key(it):
            det = it.get("detection") or {}
            p = _num(det.get("p_value"))
            s = _num((det.get("scores") or {}).get(method)) if method else None
            return (not det, p if p is not None else math.inf, -s if s is not None else math.inf)
    else:
        def key(it):
            scan = it.get("scan") or {}
            best = max((_num(e.get("score")) or 0.0 for e in scan.get("evidence") or []), default=0.0)
            return (_SCAN_RANK.get(scan.get("label"), 3), -best)
    return sorted(items, key=key)[: max(0, int(top))]


def _text_of(rec: Mapping | None) -> str:
    if not rec:
        return ""
    parts = [str(rec.get("question") or "")]
    for i, c in enumerate(rec.get("choices") or []):
        parts.append(f"{chr(65 + i) if i < 26 else i}. {c}")
    if rec.get("answer") is not None:
        parts.append(f"Answer: {rec['answer']}")
    return "\n".join(parts)


def _diff(a: str, b: str) -> tuple[str, str]:
    """Both texts escaped, with the words that differ wrapped in <mark> (removed ones in mark.del)."""
    ta, tb = re.split(r"(\s+)", a), re.split(r"(\s+)", b)
    left, right = [], []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, ta, tb, autojunk=False).get_opcodes():
        sa, sb = _e("".join(ta[i1:i2])), _e("".join(tb[j1:j2]))
        if op == "equal":
            left.append(sa), right.append(sb)
            continue
        if sa.strip():
            left.append(f'<mark class="del">{sa}</mark>')
        if sb.strip():
            right.append(f"<mark>{sb}</mark>")
    return "".join(left), "".join(right)


def _clip(text: Any, n: int) -> str:
    s = "" if text is None else str(text)
    return s if len(s) <= n else s[: n - 1] + "…"


def _pre(body: str) -> str:
    return f'<div style="white-space:pre-wrap">{body}</div>'


def _id_html(value: Any) -> str:
    """An item id, escaped, that may break only after its separators (``:``, ``/``, ``_``, ``-``, ``.``)."""
    return re.sub(r"([:/_.\-])", r"\1<wbr>", _e(value))


def _final_notes(rw: Mapping) -> list[str]:
    """Why the final attempt was not used: nothing for an accepted rewrite (earlier rounds' rejections are history)."""
    attempts = rw.get("attempts")
    if attempts:
        last = attempts[-1] or {}
        return [last["reason"]] if last.get("reason") and not last.get("accepted") else []
    return list(rw.get("reasons") or [])[-1:] if rw.get("status") == "rejected" else []


def _answer(r: Mapping, metric: str) -> str:
    """The answer parsed from a prediction: GSM8K's number under the run's metric, MCQ's letter."""
    if not r.get("parsed", True):
        return "unparsed"
    got = r.get("extracted")
    if isinstance(got, Mapping):
        got = got.get("letter") if "letter" in got else got.get(metric)
    return "unparsed" if got is None else str(got)


def _predictions(it: Mapping, metric: str) -> str:
    """Per model: the parsed answer on the original item and on its rewrite, each ✓/✗, under the gold answers."""
    evaluation = it.get("evaluation") or {}
    golds = []
    for stage in ("original", "decontaminated"):
        gold = next((r.get("gold") for r in ((e or {}).get(stage) for e in evaluation.values()) if r and r.get("gold")
                     is not None), None)
        golds.append(gold)
    lines = []
    for role, by_stage in evaluation.items():
        cells = []
        for stage in ("original", "decontaminated"):
            r = (by_stage or {}).get(stage)
            if not r:
                cells.append("–")
                continue
            mark = '<b class="ok">✓</b>' if r.get("correct") else '<b class="bad">✗</b>'
            cells.append(f'<span title="{_e(_clip(r.get("prediction"), 600))}">{_e(_clip(_answer(r, metric), 16))}</span> '
                         f"{mark}")
        lines.append(f'<div><span class="small">{_e(role)}:</span> {cells[0]} → {cells[1]}</div>')
    if not lines:
        return "–"
    if golds[1] is not None and golds[1] != golds[0]:
        gold = f"gold {_e(golds[0] if golds[0] is not None else '–')} → {_e(golds[1])}"
    else:
        gold = f"gold {_e(golds[0] if golds[0] is not None else '–')}"
    return f'<div class="small">original → rewrite; {gold}</div>' + "".join(lines)


def _item_row(rank: int, it: Mapping, method: str | None, metric: str = "flexible", show_scan: bool = True) -> str:
    det, scan, rw = it.get("detection") or {}, it.get("scan") or {}, it.get("rewrite") or {}
    src = it.get("source") or {}
    where = f'<div class="small">{_e(src.get("file"))}:{_e(src.get("line"))}</div>' if src.get("file") else ""
    flag = it.get("flagged") if det.get("flag") is None else det.get("flag")
    score = (det.get("scores") or {}).get(method) if method else None
    stat = (f"score {_fmt(score)}<br>p {_fmt_p(det.get('p_value'))}<br>q {_fmt_p(det.get('q_value'))}"
            f"<br>{'<b class=bad>flagged</b>' if flag else 'not flagged'}") if det else "–"
    label = f'<span title="{_e(scan.get("label"))}">{_e(_LABELS.get(scan.get("label"), scan.get("label") or "–"))}</span>'
    truth = f'<div class="small">truth: {_e(it["truth"])}</div>' if it.get("truth") else ""
    if show_scan:
        label += truth
    else:
        where += truth  # no scan column: the ground truth goes under the id
    evid = scan.get("evidence") or []
    if evid:
        best = max(evid, key=lambda e: _num(e.get("score")) or 0.0)
        ev = (f'<div class="small">{_e(best.get("detector"))} · {_e(best.get("match"))} · '
              f'{_fmt(best.get("score"), 1)} · {_e(best.get("doc"))}</div>'
              f'<div class="ev">{_e(_clip(best.get("text"), 360))}</div>')
        if len(evid) > 1:
            ev += f'<div class="small">+{len(evid) - 1} more</div>'
    else:
        ev = '<span class="absent">none</span>'
    orig = it.get("original") or {}
    final = rw.get("final")
    status = str(rw.get("status") or "not rewritten").replace("_", " ")
    if final:
        left, right = _diff(_text_of(orig), _text_of(final))
        right = _pre(right)
    else:
        left = _e(_text_of(orig))
        right = f'<span class="absent">{_e(status)}</span>'
    notes = _final_notes(rw)
    if notes:
        right += '<div class="small">' + "; ".join(_e(r) for r in notes) + "</div>"
    head = f'<div class="small">{_e(status)} · {_e(rw.get("method"))}</div>' if final else ""
    for name, rec in (("original", orig), ("rewrite", final)):
        if rec and rec.get("solution"):
            body = f'<details><summary>{name} solution</summary><div class="ev">{_e(rec["solution"])}</div></details>'
            left, right = (left + body, right) if name == "original" else (left, right + body)
    scan_cells = f"<td>{label}</td><td>{ev}</td>" if show_scan else ""
    return (f'<tr><td>{rank}</td><td class="id">{_id_html(it.get("id"))}{where}</td><td>{stat}</td>{scan_cells}'
            f"<td>{_pre(left)}</td><td>{head}{right}</td><td>{_predictions(it, metric)}</td></tr>")


# ---------------------------------------------------------------------------------------------- page
def _absent(why: str) -> str:
    return f'<p class="absent">{_e(why)}</p>'


def _headlines(summary: Mapping, items: Sequence[Mapping]) -> str:
    det, ev = summary.get("detection") or {}, dict(summary.get("evaluation") or {})
    gt = ev.get("ground_truth")
    if gt and gt.get("main") in (gt.get("arms") or {}):
        # a lab run: the cards give the ground truth the headline sentence states, not the model-only estimates
        main = gt["arms"][gt["main"]]
        ev.update(true_inflation=gt["true_inflation"], residual_inflation=main["residual_inflation"],
                  inflation_removed=main["inflation_removed"], fidelity=main.get("fidelity"))
    cards = []
    for key, name, help_ in _HEADLINES:
        if key not in ev:
            continue
        v = ev.get(key)
        if isinstance(v, Mapping) and _num(v.get("value")) is not None:
            signed = key in ("inflation", "true_inflation", "residual_inflation")
            ci = f"95% CI [{_fmt(_ci(v)[0])}, {_fmt(_ci(v)[1])}]" + (f", n={_e(v['n'])}" if "n" in v else "")
            body = f'<div class="v">{_fmt(v["value"], sign=signed)}</div><div class="ci">{ci}</div>'
        else:
            reason = (v or {}).get("reason") if isinstance(v, Mapping) else ev.get(f"{key}_reason")
            body = f'<div class="v">–</div><div class="absent small">{_e(reason or "not measured")}</div>'
        cards.append(f'<div class="card" title="{_e(help_)}"><div class="l">{_e(name)}</div>{body}</div>')
    if "flagged" in det:
        total = (summary.get("benchmark") or {}).get("items")
        of = f" / {_e(total)}" if total is not None else ""
        mode = f'{_e(det.get("mode"))}' + (f', FDR {_e(det["fdr"])}' if det.get("mode") == "fdr" and "fdr" in det else "")
        cards.append(f'<div class="card"><div class="l">Flagged items</div><div class="v">{_e(det["flagged"])}{of}'
                     f'</div><div class="ci">{mode}</div></div>')
    st = det.get("set_test") or {}
    if _num(st.get("p_value")) is not None:
        cards.append(f'<div class="card"><div class="l">Set-level test p-value</div>'
                     f'<div class="v">{_fmt_p(st["p_value"])}</div><div class="ci">benchmark vs reference</div></div>')
    counts = dict((det.get("scan") or {}).get("counts") or {})
    if not counts:
        for it in items:
            label = (it.get("scan") or {}).get("label")
            if label:
                counts[label] = counts.get(label, 0) + 1
    if counts:
        found = sum(v for k, v in counts.items() if k != "clean" and isinstance(v, (int, float)))
        cards.append(f'<div class="card"><div class="l">Corpus scan: items found</div><div class="v">{_e(found)}</div>'
                     f'<div class="ci">{", ".join(f"{_e(k)} {_e(v)}" for k, v in counts.items())}</div></div>')
    rw = summary.get("rewrite") or {}
    if rw.get("counts"):
        cards.append(f'<div class="card"><div class="l">Rewrites ({_e(rw.get("method"))})</div><div class="v">'
                     f'{_e(rw["counts"].get("rewritten", 0))}</div><div class="ci">'
                     f'{", ".join(f"{_e(k)} {_e(v)}" for k, v in rw["counts"].items())}</div></div>')
    if not cards:
        return _absent("No headline figures: this run has neither detection nor evaluation results.")
    note = "" if ev else _absent("No inflation figures: the run has no evaluation stage.")
    return f'<div class="cards">{"".join(cards)}</div>{note}'


def _truth_table(truth: Mapping) -> str:
    per = truth.get("methods") if isinstance(truth.get("methods"), Mapping) else truth
    rows = []
    for m, v in per.items():
        if not isinstance(v, Mapping):
            continue
        ci = v.get("auroc_ci")
        ci = f" [{_fmt(ci[0])}, {_fmt(ci[1])}]" if isinstance(ci, (list, tuple)) and len(ci) == 2 else ""
        t1 = v.get("tpr_at_1pct_fpr", v.get("tpr_at_1fpr"))
        t5 = v.get("tpr_at_5pct_fpr", v.get("tpr_at_5fpr"))
        rows.append(f"<tr><td>{_e(m)}</td><td>{_fmt(v.get('auroc'))}{ci}</td><td>{_fmt(t1)}</td><td>{_fmt(t5)}</td></tr>")
    if not rows:
        return ""
    return ("<p class=small>Pipeline's truth metrics:</p><table><tr><th>probe</th><th>AUROC</th>"
            f"<th>TPR @ 1% FPR</th><th>TPR @ 5% FPR</th></tr>{''.join(rows)}</table>")


def _accuracy_table(accuracy: Mapping) -> str:
    rows = []
    for role, subsets in accuracy.items():
        for s, c in (subsets or {}).items():
            if isinstance(c, Mapping) and _num(c.get("value")) is not None:
                rows.append(f"<tr><td>{_e(role)}</td><td>{_e(s)}</td><td>{_fmt(c['value'])}</td>"
                            f"<td>[{_fmt(_ci(c)[0])}, {_fmt(_ci(c)[1])}]</td><td>{_e(c.get('n'))}</td></tr>")
    return ("<table><tr><th>model</th><th>subset</th><th>accuracy</th><th>95% CI</th><th>n</th></tr>"
            + "".join(rows) + "</table>") if rows else ""


def _by_label_table(by_label: Mapping) -> str:
    """Accuracy per corpus-scan label and per model-side flag, before and after decontamination."""
    rows = []
    for group, fig in by_label.items():
        cells = []
        for which in ("before", "after"):
            cells.append(_accuracy_cells(fig.get(which) or {}))
        rows.append(f"<tr><td>{_e(group.replace('_', ' '))}</td>{''.join(cells)}</tr>")
    return ("<table><tr><th>items</th><th>accuracy before</th><th>95% CI</th><th>n</th><th>accuracy after</th>"
            "<th>95% CI</th><th>n</th></tr>" + "".join(rows) + "</table>") if rows else ""


def _accuracy_cells(c: Mapping) -> str:
    """Three table cells for one accuracy figure: value, 95% CI and n (dashes when it has no value)."""
    value = _num(c.get("value", c.get("accuracy")))
    if value is None:
        return f"<td>–</td><td>–</td><td>{_e(c.get('n', 0))}</td>"
    return f"<td>{_fmt(value)}</td><td>[{_fmt(_ci(c)[0])}, {_fmt(_ci(c)[1])}]</td><td>{_e(c.get('n'))}</td>"


def _by_truth_table(by_truth: Mapping) -> str:
    """Accuracy of each model on the leaked and on the unseen items, on the original and decontaminated sets."""
    rows = []
    for role, sets in by_truth.items():
        for which, groups in (sets or {}).items():
            cells = []
            for group in ("leaked", "unseen"):
                cells.append(_accuracy_cells((groups or {}).get(group) or {}))
            rows.append(f"<tr><td>{_e(role)}</td><td>{_e(which)}</td>{''.join(cells)}</tr>")
    return ("<table><tr><th>model</th><th>set</th><th>leaked</th><th>95% CI</th><th>n</th><th>unseen</th>"
            "<th>95% CI</th><th>n</th></tr>" + "".join(rows) + "</table>") if rows else ""


def _by_truth_bars(by_truth: Mapping) -> Mapping:
    """`by_truth` in the shape of `_accuracy_plot`: per model, one bar per (set, truth group)."""
    out: dict[str, dict[str, Any]] = {}
    for role, sets in by_truth.items():
        for which, groups in (sets or {}).items():
            for group in ("leaked", "unseen"):
                c = (groups or {}).get(group) or {}
                out.setdefault(role, {})[f"{which}: {group}"] = {**c, "value": c.get("value", c.get("accuracy"))}
    return out


def _run_settings(summary: Mapping) -> str | None:
    """How the models were evaluated and what the lm-eval export reproduces, in one line."""
    ev, lm = summary.get("evaluation") or {}, summary.get("lm_eval") or {}
    styles = ev.get("prompt_style") if isinstance(ev.get("prompt_style"), Mapping) else {}
    parts = []
    if styles:
        budgets = ev.get("max_gen_toks") if isinstance(ev.get("max_gen_toks"), Mapping) else {}
        parts.append("evaluated with the " + ", ".join(
            f"{_e(style)} prompt style ({_e(role)}" + (f", at most {_e(budgets[role])} new tokens" if budgets.get(role)
                                                       else "") + ")" for role, style in styles.items()))
    if lm.get("task"):
        parts.append(f"lm-eval task {_e(lm['task'])}: {_e(lm.get('prompt_style'))} prompts, "
                     f"{_e(lm.get('num_fewshot'))}-shot, max_gen_toks {_e(lm.get('max_gen_toks'))}")
    return "; ".join(parts) or None


def render_html_report(summary: Mapping[str, Any], items: Sequence[Mapping[str, Any]], top: int = 20) -> str:
    """The whole report as one HTML string (see the module docstring)."""
    require("matplotlib", "report", "The HTML report")
    summary = summary or {}
    items = list(items or [])
    bench, models, det = summary.get("benchmark") or {}, summary.get("models") or {}, summary.get("detection") or {}
    ev = summary.get("evaluation") or {}
    title = summary.get("title") or "itd report"
    meta = [f"benchmark {_e(bench.get('path') or '–')} ({_e(bench.get('kind') or '?')}, "
            f"{_e(bench.get('items', len(items)))} items)"]
    if models.get("model"):
        meta.append(f"model {_e(models['model'])}" + (f", clean twin {_e(models['clean'])}" if models.get("clean") else ""))
    if det.get("decision"):
        meta.append(f"decision probe {_e(det['decision'])}, mode {_e(det.get('mode') or '–')}")
    settings = _run_settings(summary)
    if settings:
        meta.append(settings)
    made = [f"created {_e(summary['created'])}"] if summary.get("created") else []
    made += [f"itd {_e(summary['version'])}"] if summary.get("version") else []
    if made:
        meta.append(" · ".join(made))
    out = [f"<h1>{_e(title)}</h1>"]
    if summary.get("headline"):
        out.append(f'<p class="headline">{_e(summary["headline"])}</p>')
    out += [f'<div class="meta">{"<br>".join(meta)}</div>', "<h2>Headline figures</h2>", _headlines(summary, items)]

    method = _decision(summary, items)
    out.append("<h2>Score distributions</h2>")
    if method is None:
        out.append(_absent("No score distribution: no item carries model-side detection scores."))
    else:
        img, note = _distribution_plot(summary, items, method)
        out.append(f'<div class="plots">{img}</div>' + (_absent(note) if note else ""))

    out.append("<h2>ROC curves (ground truth)</h2>")
    roc = _roc_plot(items, _methods(items, summary)) if method else None
    if roc is None:
        why = ("no item carries model-side scores" if method is None
               else "items carry no ground truth (both leaked and unseen items are needed)")
        out.append(_absent(f"No ROC curves: {why}."))
    else:
        out.append(f'<div class="plots">{roc}<div>{_truth_table(det.get("truth") or {})}</div></div>')

    out.append("<h2>Accuracy</h2>")
    acc = ev.get("accuracy") or {}
    acc_img = _accuracy_plot(acc) if isinstance(acc, Mapping) else None
    if acc_img is None:
        out.append(_absent("No accuracy bars: " + ("the run has no evaluation stage." if not ev
                                                    else "the evaluation holds no accuracy figures.")))
    else:
        out.append(f'<div class="plots">{acc_img}<div>{_accuracy_table(acc)}</div></div>')
    if isinstance(ev.get("by_truth"), Mapping) and ev["by_truth"]:
        title = "Accuracy on the leaked and the unseen items (ground truth)"
        bars = _accuracy_plot(_by_truth_bars(ev["by_truth"]), title,
                              [f"{w}: {g}" for w in ("original", "decontaminated") for g in ("leaked", "unseen")])
        out.append(f"<h3>{title}</h3>" + f'<div class="plots">{bars or ""}<div>{_by_truth_table(ev["by_truth"])}</div></div>')
    if isinstance(ev.get("by_label"), Mapping) and ev["by_label"]:
        title = "Accuracy by contamination label (corpus scan) and by model-side flag"
        by_label = {which: {g: fig.get(which) or {} for g, fig in ev["by_label"].items()} for which in ("before", "after")}
        bars = _accuracy_plot(by_label, "Accuracy by scan label and flag, before and after", list(ev["by_label"]))
        out.append(f"<h3>{title}</h3>" + f'<div class="plots">{bars or ""}<div>{_by_label_table(ev["by_label"])}</div></div>')

    chosen = top_items(items, method, top)
    out.append(f"<h2>Most suspicious items (top {len(chosen)} of {len(items)})</h2>")
    if not chosen:
        out.append(_absent("No items in this run."))
    else:
        order = ("by p-value, then score" if any(it.get("detection") for it in items)
                 else "by corpus-scan label, then evidence score")
        out.append(f'<p class="small">Sorted {order}. Words that differ are <mark class="del">marked in the '
                   'original</mark> and <mark>in the rewrite</mark>.</p>')
        show_scan = any(it.get("scan") for it in items)
        columns = [("#", 3), ("id", 9), (f"{_e(method)} / p" if method else "score / p", 8), ("scan", 8),
                   ("best evidence", 17), ("original", 22), ("rewrite", 22), ("predictions", 14)]
        if not show_scan:  # no corpus scan ran: its columns would be empty
            columns = [(h, w) for h, w in columns if h not in ("scan", "best evidence")]
        total = sum(w for _, w in columns)
        head = "".join(f'<th style="width:{100 * w / total:.1f}%">{h}</th>' for h, w in columns)
        metric = str(ev.get("metric") or "flexible")
        rows = "".join(_item_row(i + 1, it, method, metric, show_scan) for i, it in enumerate(chosen))
        out.append(f'<table class="items"><tr>{head}</tr>{rows}</table>')
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>\n" + "\n".join(out) + "\n</body></html>\n")


def write_html_report(path: str | os.PathLike, summary: Mapping[str, Any], items: Sequence[Mapping[str, Any]], *, top: int = 20) -> None:
    """Render the report and write it to `path` atomically."""
    text = render_html_report(summary, items, top=top)
    with atomic_write(path) as f:
        f.write(text)
