"""The default and the exact `itd scan` beside the peers' decontamination passes, on one corpus, in one run.

One JSONL corpus of `--mb` MB (built as in `bench_scan.py`: GSM8K train and MMLU texts, filler, planted GSM8K
test leaks) is scanned for GSM8K test by every contender, each in its own subprocess, round-robin over `--reps`
repetitions (slow peers run `--slow-reps` times). Every contender reads and parses the JSONL itself and reports
its own CPU seconds for the pass over the corpus (building its index of the benchmark is left out and reported
apart), its wall seconds and peak RSS, and how many documents it flags. Speeds are MB of the corpus file per
CPU-second, i.e. per core; every contender is single-process.

Contenders:
- `itd default`: `itd.scan` with its defaults (`ngram` + `minhash`), one process;
- `itd exact`: `itd.scan` with the exact pass only (`ngram`);
- `python 13-gram set`: lowercase word tokens (`\\w+`), every 13-gram of each document looked up in a Python set
  of the benchmark's 13-grams; the plain baseline;
- `lm-eval Janitor`: lm-evaluation-harness's 13-gram `Janitor` (`register_contaminant`, then `clean` per
  document: its C++ helper when built, otherwise its Python path);
- `datatrove NGramsDecontFilter`: datatrove's n-gram decontamination filter (13-grams; its index written with
  its own `NGramsDecontIndexer.compute_hashes`, since its indexer otherwise reads lighteval tasks);
- `dolma dedupe`: Dolma's Bloom-filter decontamination (`dolma dedupe` with `by_ngram`, 13-grams, any overlap): a
  Bloom filter of the benchmark's paragraphs, then the corpus against it read-only, one process.

lm-evaluation-harness comes with itd's `dev` extra. datatrove and Dolma are not `itd` dependencies (Dolma pins
older numpy): give `--peer-python` a Python that has `datatrove` (with spacy, for its English word tokenizer) and
`dolma` (its `dolma` script beside it), e.g. a virtual environment made for the benchmark; a peer missing there is
reported as such.

    python -m venv ../peers && ../peers/bin/pip install datatrove spacy "xxhash<4" dolma  # xxhash 4 refuses str
    python benchmarks/bench_peers.py --mb 300 --reps 2 --peer-python ../peers/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

N = 13

# Each child prints one JSON line: cpu (the corpus pass), fit_cpu (its benchmark index), wall, rss_mib, flagged.
_PRELUDE = r"""
import json, resource, sys, time
bench, corpus = sys.argv[1], sys.argv[2]
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
def items():
    with open(bench, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                yield r["question"] + "\n" + r["answer"]
def docs():
    with open(corpus, encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)["text"]
def report(fit_cpu, c0, t0, flagged):
    c1, t1 = cpu(), time.perf_counter()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"cpu": c1 - c0, "fit_cpu": fit_cpu, "wall": t1 - t0, "rss_mib": rss, "flagged": flagged}))
"""

_ITD = _PRELUDE + r"""
import itd
detectors = tuple(sys.argv[3].split(","))
c0 = cpu()
samples = itd.load_benchmark(bench)
c0, t0 = cpu(), time.perf_counter()
# the scan fits its detectors itself: its fit is inside this pass
report_ = itd.scan(samples, [corpus], itd.ScanConfig(detectors=detectors, workers=1))
report(0.0, c0, t0, sum(x.label != "clean" for x in report_.results))
"""

_PYTHON_SET = _PRELUDE + r"""
import re
word = re.compile(r"\w+")
def grams(text):
    toks = word.findall(text.lower())
    return zip(*(toks[i:] for i in range(__N__)))
c0 = cpu()
index = set()
for text in items():
    index.update(grams(text))
fit = cpu() - c0
c0, t0 = cpu(), time.perf_counter()
flagged = sum(1 for text in docs() if not index.isdisjoint(grams(text)))
report(fit, c0, t0, flagged)
""".replace("__N__", str(N))

_JANITOR = _PRELUDE + r"""
from lm_eval.decontamination.janitor import Janitor
c0 = cpu()
janitor = Janitor(ngram_n=__N__)
for text in items():
    janitor.register_contaminant(text)
fit = cpu() - c0
c0, t0 = cpu(), time.perf_counter()
flagged = 0
for text in docs():
    # the Janitor cuts the contaminated stretches out; a document is flagged when it no longer comes back whole
    pieces = janitor.clean(text)
    flagged += not (len(pieces) == 1 and len(pieces[0]) == len(text))
report(fit, c0, t0, flagged)
""".replace("__N__", str(N))

_DATATROVE = _PRELUDE + r"""
import os, tempfile
import numpy as np
from datatrove.data import Document
from datatrove.pipeline.decont.n_grams import NGramsDecontConfig, NGramsDecontFilter, NGramsDecontIndexer
from datatrove.utils.hashing import create_hash_func
from datatrove.utils.word_tokenizers import load_word_tokenizer
config = NGramsDecontConfig(n_grams=__N__, find_query_ngrams=True)
c0 = cpu()
indexer = object.__new__(NGramsDecontIndexer)  # its __init__ wants lighteval; compute_hashes needs only these
indexer.config, indexer.tokenizer, indexer.hash_func = config, load_word_tokenizer("en"), create_hash_func(config.hash_config)
hashes = set()
with open(bench, encoding="utf-8") as f:
    for line in f:
        if line.strip():
            r = json.loads(line)
            hashes.update(indexer.compute_hashes(r["answer"], r["question"]))
folder = tempfile.mkdtemp()
np.array(sorted(hashes), dtype=config.hash_config.np_descr).tofile(os.path.join(folder, "gsm8k.index.hashes"))
filt = NGramsDecontFilter(folder, config=config)
filt.load_index_hashes()
fit = cpu() - c0
c0, t0 = cpu(), time.perf_counter()
flagged = 0
for i, text in enumerate(docs()):
    keep = filt.filter(Document(text=text, id=str(i)))
    flagged += keep is not True
report(fit, c0, t0, flagged)
""".replace("__N__", str(N))

_DOLMA = _PRELUDE + r"""
import gzip, os, resource, shutil, subprocess, tempfile
dolma = sys.argv[3]
work = tempfile.mkdtemp()
def dolma_docs(texts, name):
    path = os.path.join(work, name, "documents", "part.jsonl.gz")
    os.makedirs(os.path.dirname(path))
    with gzip.open(path, "wt", encoding="utf-8", compresslevel=1) as f:
        for i, text in enumerate(texts):
            f.write(json.dumps({"id": str(i), "text": text, "source": name}) + "\n")
    return path
def run(path, read_only):
    args = [dolma, "dedupe", "--documents", path, "--dedupe.name", "decon",
            "--dedupe.paragraphs.attribute_name", "bff_duplicate_paragraph_spans",
            "--dedupe.paragraphs.by_ngram.ngram_length", "__N__", "--dedupe.paragraphs.by_ngram.overlap_threshold", "0",
            "--dedupe.skip_empty", "--bloom_filter.file", os.path.join(work, "bloom.bin"),
            "--bloom_filter.estimated_doc_count", "1000000", "--bloom_filter.desired_false_positive_rate", "0.0001",
            "--processes", "1"]
    args.append("--bloom_filter.read_only" if read_only else "--no-bloom_filter.read_only")
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(args, check=True, capture_output=True)
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime, r1.ru_maxrss / 1024
bench_docs = dolma_docs(items(), "bench")
corpus_docs = dolma_docs(docs(), "corpus")  # Dolma reads gzip'd documents: written beforehand, not timed
fit, _ = run(bench_docs, read_only=False)
t0 = time.perf_counter()
pass_cpu, rss = run(corpus_docs, read_only=True)
wall = time.perf_counter() - t0
flagged = 0
attributes = corpus_docs.replace("documents", os.path.join("attributes", "decon"))
with gzip.open(attributes, "rt", encoding="utf-8") as f:
    for line in f:
        # one [start, end, share of the paragraph's 13-grams in the filter] per paragraph: flagged when one is seen
        spans = json.loads(line)["attributes"].get("bff_duplicate_paragraph_spans") or []
        flagged += any(score > 0 for _, _, score in spans)
shutil.rmtree(work)
print(json.dumps({"cpu": pass_cpu, "fit_cpu": fit, "wall": wall, "rss_mib": rss, "flagged": flagged}))
""".replace("__N__", str(N))

CONTENDERS = {
    "itd default (ngram + minhash)": (_ITD, ["ngram,minhash"], "itd"),
    "itd exact (ngram)": (_ITD, ["ngram"], "itd"),
    "python 13-gram set": (_PYTHON_SET, [], "itd"),
    "lm-eval Janitor": (_JANITOR, [], "itd"),  # lm_eval is in itd's `dev` extra
    "datatrove NGramsDecontFilter": (_DATATROVE, [], "peer"),
    "dolma dedupe (Bloom filter)": (_DOLMA, ["dolma"], "peer"),
}
SLOW = {"datatrove NGramsDecontFilter", "lm-eval Janitor", "dolma dedupe (Bloom filter)"}


def run(name: str, bench: Path, corpus: Path, peer_python: str) -> dict | str:
    code, extra, side = CONTENDERS[name]
    python = sys.executable if side == "itd" else peer_python
    if extra == ["dolma"]:
        extra = [str(Path(peer_python).parent / "dolma")]
    env = dict(os.environ, PYTHONPATH=str(C.ROOT)) if side == "itd" else {**os.environ, "PYTHONPATH": ""}
    done = subprocess.run([python, "-c", code, str(bench), str(corpus), *extra], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        return (done.stderr.strip().splitlines() or ["failed"])[-1][:160]
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.data_arg(ap)
    ap.add_argument("--mb", type=float, default=300.0, help="Corpus size in MB (10^6 bytes).")
    ap.add_argument("--reps", type=int, default=2, help="Repetitions of each fast contender (round-robin).")
    ap.add_argument("--slow-reps", type=int, default=1, help="Repetitions of the slow peers.")
    ap.add_argument("--per-variant", type=int, default=5, help="Planted leaks per itd.pipeline.demo variant.")
    ap.add_argument("--peer-python", default=sys.executable, help="A Python with lm_eval, datatrove, spacy, dolma.")
    ap.add_argument("--only", default="", help="Comma-separated contender name prefixes to run (default: all).")
    args = ap.parse_args(argv)

    rng = random.Random(args.seed)
    bench = Path(args.data).resolve() / "gsm8k" / "test.jsonl"
    names = [n for n in CONTENDERS if not args.only or any(n.startswith(p.strip()) for p in args.only.split(","))]
    with C.workdir(args.workdir, "itd-bench-peers-") as wd:
        corpus = (wd / f"corpus_{args.mb:g}mb.jsonl").resolve()
        planted, truth = C.planted_gsm8k_leaks(args.data, rng, args.per_variant)
        info = C.write_corpus(corpus, int(args.mb * 1e6), C.real_texts(args.data), rng, planted)
        mb = corpus.stat().st_size / 1e6
        results: dict[str, list] = {n: [] for n in names}
        loads = []
        for rep in range(max(args.reps, args.slow_reps)):
            loads.append(os.getloadavg()[0])
            for name in names:
                if rep < (args.slow_reps if name in SLOW else args.reps):
                    C.warm_page_cache(corpus)
                    results[name].append(run(name, bench, corpus, args.peer_python))
                    print(f"# {name}: {results[name][-1]}", file=sys.stderr, flush=True)

    C.header(f"Decontamination passes side by side ({mb:.0f} MB corpus, GSM8K test benchmark)")
    print(f"corpus: {info['documents']:,} documents, {len(planted)} planted leaks; every contender single-process\n")
    rate = {n: [mb / r["cpu"] for r in rs if isinstance(r, dict)] for n, rs in results.items()}
    ok = {n: rs for n, rs in rate.items() if rs}
    peers = [n for n in ok if not n.startswith("itd")]
    fastest_peer = max(peers, key=lambda n: max(ok[n])) if peers else None
    rows = []
    for name, rs in results.items():
        if name not in ok:
            rows.append((name, "-", "-", "-", "-", "-", "-", f"not run: {rs[0] if rs else 'no result'}"))
            continue
        done = [r for r in rs if isinstance(r, dict)]
        ratio = max(ok[name]) / max(ok[fastest_peer]) if fastest_peer else float("nan")
        rows.append((name, max(ok[name]), statistics.median(ok[name]), min(r["wall"] for r in done),
                     max(r["rss_mib"] for r in done), done[-1]["fit_cpu"], ratio, done[-1]["flagged"]))
    print(C.table(["contender", "best MB per CPU-s", "median MB per CPU-s", "best wall s", "peak RSS MiB",
                   "index build CPU-s", "x fastest peer", "documents flagged"], rows))
    print()
    print("all repetitions, MB per CPU-s: " + "; ".join(f"{n}: " + ", ".join(f"{x:.2f}" for x in v) for n, v in ok.items()))
    print(f"1-min load average before each round: {', '.join(f'{x:.2f}' for x in loads)} (on {os.cpu_count()} cores)")
    if fastest_peer and "itd default (ngram + minhash)" in ok:
        best = max(ok["itd default (ngram + minhash)"])
        print(f"\nfastest peer: {fastest_peer} ({max(ok[fastest_peer]):.2f} MB per CPU-s); itd default: {best:.2f} "
              f"= {best / max(ok[fastest_peer]):.2f}x (goal >= 2x; >= 20 MB per CPU-s: "
              f"{'met' if best >= 20 else 'missed'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
