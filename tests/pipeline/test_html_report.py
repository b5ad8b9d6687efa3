"""report.html: sections present only with their data, escaping, self-containment, plots, and a headless-Chromium
render (skipped without Debian's chromium unless ITD_REQUIRE_CHROMIUM=1)."""

from __future__ import annotations

import base64
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from itd.core import stats
from itd.pipeline.html_report import render_html_report, roc_curve, top_items, write_html_report

CHROMIUM = "/usr/bin/chromium"
XSS = "<script>alert('x')</script>"


def _acc(acc, n):
    half = 1.96 * (acc * (1 - acc) / n) ** 0.5
    return {"value": acc, "ci": [max(0.0, acc - half), min(1.0, acc + half)], "n": n}


def full_run(n: int = 60, seed: int = 0):
    """A realistic run: 60 GSM8K-like items, a third leaked with higher scores, truth, scan, rewrites, evaluation."""
    rng = random.Random(seed)
    items = []
    for i in range(n):
        leaked = i % 3 == 0
        a, b = rng.randint(2, 40), rng.randint(2, 40)
        q = f"Tom has {a} apples and buys {b} more at the market. How many apples does he have now?"
        if i == 3:
            q = f"{XSS} & Tom's \"apples\" {a} + {b}?"
        scores = {m: rng.gauss(1.2 if leaked else 0.0, 0.8) for m in ("loss", "zlib", "mink", "minkpp")}
        p = min(1.0, max(1e-3, rng.random() * (0.05 if leaked else 1.0)))
        flag = leaked and p < 0.02
        a2, b2 = a + 3, b + 5
        items.append({
            "id": f"test:{i}", "source": {"file": "test.jsonl", "line": i + 1},
            "original": {"question": q, "answer": a + b, "choices": None,
                         "solution": f"He has {a}+{b}=<<{a}+{b}={a + b}>>{a + b} apples.\n#### {a + b}"},
            "flagged": flag,
            "detection": {"scores": scores, "p_value": p, "q_value": min(1.0, p * 3), "flag": flag},
            "scan": {"label": "input_and_label_contaminated" if leaked else "clean",
                     "evidence": [{"detector": "ngram", "doc": f"corpus/a.jsonl:{100 + i}", "text": q + " <b>bold</b>",
                                   "score": 97.5, "match": "raw"}] if leaked else []},
            "truth": "leaked" if leaked else "unseen",
            "rewrite": ({"status": "rewritten", "method": "numeric",
                         "final": {"question": q.replace(str(a), str(a2), 1).replace(str(b), str(b2), 1),
                                   "answer": a2 + b2, "choices": None, "solution": f"#### {a2 + b2}"},
                         "reasons": []} if flag else {"status": "not_flagged", "method": "numeric", "final": None,
                                                      "reasons": []}),
            "evaluation": {role: {"original": {"prediction": f"The answer is {a + b}", "extracted": str(a + b),
                                               "correct": leaked or role == "clean", "parsed": True},
                                  "decontaminated": {"prediction": "I think 7", "extracted": "7", "correct": False,
                                                     "parsed": True}}
                           for role in ("model", "clean")},
        })
    ref = [rng.gauss(0.0, 0.8) for _ in range(200)]
    summary = {
        "title": "GSM8K <decontamination> run", "created": "2025-01-01T00:00:00Z", "version": "0.9.0",
        "benchmark": {"path": "test.jsonl", "kind": "gsm8k", "items": n},
        "models": {"model": "lab/contaminated", "clean": "lab/clean"},
        "detection": {"decision": "minkpp", "mode": "fdr", "methods": ["loss", "zlib", "mink", "minkpp"],
                      "flagged": sum(it["flagged"] for it in items), "fdr": 0.05, "set_test": {"p_value": 1.2e-6},
                      "reference_scores": {"minkpp": ref, "loss": ref},
                      "truth": {"leaked": 20, "unseen": 40,
                                "methods": {"minkpp": {"auroc": 0.83, "auroc_ci": [0.72, 0.92], "tpr_at_1pct_fpr": 0.1,
                                                       "tpr_at_5pct_fpr": 0.3}}},
                      "scan": {"counts": {"clean": 40, "input_contaminated": 0, "input_and_label_contaminated": 20}}},
        "rewrite": {"method": "numeric", "counts": {"rewritten": 8, "rejected": 1, "unchanged": 0}, "rounds": 2},
        "evaluation": {"metric": "flexible",
                       "accuracy": {"model": {"original": _acc(0.7, n), "decontaminated": _acc(0.45, n),
                                              "flagged_before": _acc(0.95, 20), "flagged_after": _acc(0.4, 20),
                                              "unflagged": _acc(0.55, 40)},
                                    "clean": {"original": _acc(0.42, n), "decontaminated": _acc(0.4, n)}},
                       "inflation": {"value": 0.25, "ci": [0.12, 0.38], "n": n},
                       "true_inflation": {"value": 0.28, "ci": [0.15, 0.4], "n": n},
                       "residual_inflation": {"value": 0.03, "ci": [-0.05, 0.1], "n": n},
                       "inflation_removed": {"value": 0.89, "ci": [0.6, 1.0], "n": n},
                       "fidelity": {"value": 0.95, "ci": [0.9, 0.99], "n": n},
                       "resistance": {"value": None, "reason": "needs rewritten items <evaluated> twice"}},
    }
    return summary, items


def minimal_run():
    """Corpus scan only: no model scores, no truth, no rewrites, no evaluation."""
    items = [{"id": f"m:{i}", "original": {"question": f"Question {i} {XSS}", "answer": "B",
                                           "choices": ["one", "two", "three", "four"]},
              "flagged": i == 1,
              "scan": {"label": "input_contaminated" if i == 1 else "clean",
                       "evidence": [{"detector": "minhash", "doc": "c.jsonl:9", "text": "Question 1", "score": 91.0,
                                     "match": "raw"}] if i == 1 else []}}
             for i in range(5)]
    return {"benchmark": {"path": "mmlu/", "kind": "mmlu", "items": 5}}, items


def _images(page: str) -> list[str]:
    return re.findall(r'<img alt="[^"]*" src="data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)">', page)


def _assert_self_contained(page: str):
    assert not re.search(r"""(?:src|href|action)\s*=\s*["']?\s*(?:https?:)?//""", page, re.I)
    assert not re.search(r"@import|url\(\s*['\"]?(?:https?:)?//", page, re.I)
    assert "<script" not in page.lower() and "<link" not in page.lower()


def test_full_report_sections_plots_escaping():
    summary, items = full_run()
    page = render_html_report(summary, items, top=15)
    _assert_self_contained(page)
    for section in ("Headline figures", "Score distributions", "ROC curves", "Accuracy", "Most suspicious items"):
        assert section in page
    assert "No ROC curves" not in page and "No accuracy bars" not in page and "No reference-set scores" not in page
    imgs = _images(page)
    assert len(imgs) == 3  # distribution, ROC, accuracy
    for data in imgs:
        svg = base64.b64decode(data).decode("utf-8")
        assert svg.lstrip().startswith("<svg") and "<path" in svg
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "&lt;b&gt;bold&lt;/b&gt;" in page and "GSM8K &lt;decontamination&gt; run" in page
    assert "needs rewritten items &lt;evaluated&gt; twice" in page
    assert "+0.250" in page and "95% CI [0.120, 0.380]" in page  # headline inflation
    assert "<mark>" in page and '<mark class="del">' in page  # the rewrites' changed numbers
    assert page.count("<tr><td>") >= 15 and "Most suspicious items (top 15 of 60)" in page
    assert "minkpp: AUROC" not in page  # legend text lives inside the SVG (glyphs as paths), not the HTML


def test_the_headline_sentence_opens_the_report():
    summary, items = full_run()
    summary["headline"] = "The contaminated model scores 71% (clean twin 54%); <b>52</b> of its 60 leaked items were flagged."
    page = render_html_report(summary, items)
    body = page[page.index("<body>"):]
    first = re.search(r"<h1>.*?</h1>\s*<p class=\"headline\">(.*?)</p>", body, re.S)
    assert first and first.group(1).startswith("The contaminated model scores 71% (clean twin 54%)")
    assert "&lt;b&gt;52&lt;/b&gt;" in first.group(1) and body.index("headline") < body.index("Headline figures")
    summary.pop("headline")
    assert 'class="headline"' not in render_html_report(summary, items)


def test_minimal_report_says_why_sections_are_absent():
    summary, items = minimal_run()
    page = render_html_report(summary, items)
    _assert_self_contained(page)
    assert _images(page) == []
    assert "No score distribution" in page and "No ROC curves" in page and "No accuracy bars" in page
    assert "&lt;script&gt;" in page and "<script>" not in page
    # with no detection the table is ordered by scan label: the contaminated item first
    first = re.search(r'<tr><td>1</td><td class="id">(.*?)</td>', page).group(1)
    assert first == "m:<wbr>1"
    assert ">scan</th>" in page and ">best evidence</th>" in page  # a scan ran: its columns are shown
    assert render_html_report({}, [])  # nothing at all still renders


def test_no_truth_no_reference_only_benchmark_distribution():
    summary, items = full_run()
    for it in items:
        it["truth"] = None
    summary["detection"]["reference_scores"] = None
    summary["evaluation"] = None
    page = render_html_report(summary, items)
    assert len(_images(page)) == 1
    assert "No reference-set scores" in page and "No ROC curves: items carry no ground truth" in page
    assert "No accuracy bars: the run has no evaluation stage." in page


def test_roc_area_matches_mann_whitney_auroc_with_ties():
    rng = np.random.default_rng(1)
    for _ in range(20):
        pos = np.round(rng.normal(1, 1, rng.integers(1, 40)), 1)
        neg = np.round(rng.normal(0, 1, rng.integers(1, 40)), 1)
        fpr, tpr, area = roc_curve(pos, neg)
        assert area == pytest.approx(stats.auroc(pos, neg), abs=1e-12)
        assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1
        assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    with pytest.raises(ValueError):
        roc_curve([], [1.0])


def test_top_items_order():
    summary, items = full_run()
    chosen = top_items(items, "minkpp", 10)
    ps = [it["detection"]["p_value"] for it in chosen]
    assert ps == sorted(ps) and ps[0] == min(it["detection"]["p_value"] for it in items)


def test_write_is_atomic_and_missing_matplotlib(tmp_path, monkeypatch):
    summary, items = minimal_run()
    path = tmp_path / "out" / "report.html"
    write_html_report(path, summary, items, top=3)
    assert path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]

    from itd.core.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MissingDependencyError, match=r"itd\[report\]"):
        render_html_report(summary, items)


def _chromium(path: str = CHROMIUM) -> str:
    exe = path if os.access(path, os.X_OK) else shutil.which("chromium")
    if not exe:
        reason = f"headless Chromium not found at {path} or on PATH (apt-get install chromium)"
        if os.environ.get("ITD_REQUIRE_CHROMIUM") == "1":
            pytest.fail(reason + "; ITD_REQUIRE_CHROMIUM=1 forbids skipping")
        pytest.skip(reason)
    return exe


def test_missing_chromium_skips_unless_required(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("ITD_REQUIRE_CHROMIUM", raising=False)
    with pytest.raises(pytest.skip.Exception, match="not found"):
        _chromium(str(tmp_path / "no-chromium"))
    monkeypatch.setenv("ITD_REQUIRE_CHROMIUM", "1")
    with pytest.raises(pytest.fail.Exception, match="forbids skipping"):
        _chromium(str(tmp_path / "no-chromium"))


def test_deterministic_and_never_touches_pyplot():
    code = (
        "import sys; sys.path.insert(0, 'tests/pipeline')\n"
        "from test_html_report import full_run\n"
        "from itd.pipeline.html_report import render_html_report\n"
        "s, i = full_run(); a = render_html_report(s, i); b = render_html_report(s, i)\n"
        "assert a == b\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot was imported'\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_renders_in_headless_chromium(tmp_path):
    exe = _chromium()
    summary, items = _with_splits(*full_run())
    summary["headline"] = "The contaminated model scores 70% (clean twin 42%); 8 items were flagged."
    report = tmp_path / "report.html"
    write_html_report(report, summary, items)
    shot = tmp_path / "shot.png"
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
           "--window-size=1280,2000", report.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert shot.is_file() and shot.stat().st_size > 0, f"no screenshot (rc {proc.returncode}): {proc.stderr[-2000:]}"
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1280, 2000)
    assert zlib.crc32(data[12:29]) == struct.unpack(">I", data[29:33])[0]
    try:
        from PIL import Image
    except ImportError:
        return
    with Image.open(shot) as img:
        img = img.convert("RGB")
        colours = img.getcolors(maxcolors=1 << 20)
        assert colours is not None and len(colours) > 50  # text and plots, not a blank page
        # the plots were decoded and drawn: the accuracy bars' blue (#1f77b4) and orange (#ff7f0e) fill areas
        def area(rgb):
            return sum(n for n, c in colours if all(abs(x - y) <= 12 for x, y in zip(c, rgb)))

        assert area((31, 119, 180)) > 5000 and area((255, 127, 14)) > 2000


def _with_splits(summary, items):
    """The run's accuracy split by ground truth and by scan label (as the pipeline writes them), its generation
    settings, and item records as `itd.evaluation.ItemResult.to_dict` writes them."""
    ev = summary["evaluation"]
    ev["by_truth"] = {role: {which: {"leaked": {**_acc(0.9 if role == "model" and which == "original" else 0.3, 20),
                                                "accuracy": 0.9},
                                     "unseen": {**_acc(0.35, 40), "accuracy": 0.35}}
                             for which in ("original", "decontaminated")} for role in ("model", "clean")}
    ev["by_label"] = {"clean": {"before": _acc(0.4, 40), "after": _acc(0.38, 40)},
                      "input_and_label_contaminated": {"before": _acc(0.95, 20), "after": _acc(0.3, 20)},
                      "flagged": {"before": _acc(0.97, 8), "after": _acc(0.25, 8)}}
    ev["prompt_style"], ev["max_gen_toks"] = {"model": "plain", "clean": "plain"}, {"model": 128, "clean": 128}
    summary["lm_eval"] = {"task": "test_itd", "prompt_style": "plain", "num_fewshot": 0, "max_gen_toks": 128}
    for it in items:
        for role, stages in it["evaluation"].items():
            for stage, r in stages.items():
                answer = r["extracted"]
                r["extracted"] = {"strict": None, "flexible": answer}
                r["gold"] = str(it["original"]["answer"] if stage == "original" or not it["rewrite"]["final"]
                                else it["rewrite"]["final"]["answer"])
        if it["rewrite"]["status"] == "rewritten":  # accepted in round 2 after a rejection in round 1
            it["rewrite"]["reasons"] = ["still flagged by the corpus scan"]
            it["rewrite"]["attempts"] = [{"round": 1, "accepted": False, "reason": "still flagged by the corpus scan"},
                                         {"round": 2, "accepted": True, "reason": None}]
    return summary, items


def test_splits_settings_and_readable_predictions():
    summary, items = _with_splits(*full_run())
    items[1]["rewrite"] = {"status": "rejected", "method": "numeric", "final": None,
                           "reasons": ["answer changed", "still flagged"],
                           "attempts": [{"round": 1, "accepted": False, "reason": "answer changed"},
                                        {"round": 2, "accepted": False, "reason": "still flagged"}]}
    items[1]["detection"]["p_value"] = 1e-9  # first row
    page = render_html_report(summary, items, top=60)
    assert len(_images(page)) == 5  # distribution, ROC, accuracy, by truth, by label
    assert "Accuracy on the leaked and the unseen items (ground truth)" in page
    assert "<td>model</td><td>original</td><td>0.900</td><td>[0.769, 1.000]</td><td>20</td><td>0.350</td>" in page
    assert "<td>input and label contaminated</td><td>0.950</td>" in page
    assert "evaluated with the plain prompt style (model, at most 128 new tokens)" in page
    assert "lm-eval task test_itd: plain prompts, 0-shot, max_gen_toks 128" in page
    # predictions: the parsed answer under the run's metric, the gold answer(s) and a mark; never a dict repr
    assert "{&#x27;" not in page and "{'" not in page
    flagged = next(it for it in items if it["rewrite"]["status"] == "rewritten")
    gold_before, gold_after = flagged["original"]["answer"], flagged["rewrite"]["final"]["answer"]
    row = re.search(rf'<td class="id">{re.escape(flagged["id"]).replace(":", ":<wbr>")}<div.*?</tr>', page, re.S).group(0)
    assert f"gold {gold_before} → {gold_after}" in row
    assert re.search(rf'model:</span> <span title="[^"]*">{gold_before}</span> <b class="ok">✓</b> → '
                     r'<span title="[^"]*">7</span> <b class="bad">✗</b>', row)
    # rejection notes: the final attempt's only; none under an accepted rewrite
    assert "still flagged by the corpus scan" not in row
    rejected = re.search(r'<tr><td>1</td>.*?</tr>', page, re.S).group(0)
    assert "still flagged" in rejected and "answer changed" not in rejected


def test_no_scan_hides_its_columns_and_ids_break_only_between_tokens():
    summary, items = full_run()
    for it in items:
        it.pop("scan")
        it["id"] = f"gsm8k-test/item_{it['id'][5:]}.v2"
    summary["detection"].pop("scan")
    page = render_html_report(summary, items)
    assert ">scan</th>" not in page and ">best evidence</th>" not in page
    assert page.count("<th ") == 6 and "truth: leaked" in page
    assert '<td class="id">gsm8k-<wbr>test/<wbr>item_<wbr>0.<wbr>v2' in page
    assert "td.id{overflow-wrap:normal;word-break:keep-all" in page
