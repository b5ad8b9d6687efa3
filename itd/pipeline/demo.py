"""The embedded default: benchmarks of the project's own making, for `itd demo` and the tests.

`arithmetic_problems` writes small GSM8K-layout word problems (worked solutions with `<<expr=result>>`
annotations and a final `#### N`) whose answers are computed: correct by construction, and learnable, so a
contamination-lab model trained on other problems of the kind has a real, non-trivial accuracy on them.
`run_demo` tells the whole story on them (or on real files): lab twins, detection, rewriting, evaluation.

`generate_problems` writes harder problems of the same layout for corpus scans; `plant` turns an item into a
leaked copy of a given kind, and `build_demo` writes a benchmark, a corpus with planted leaks and the ground
truth. The same planting functions build the test corpora from real GSM8K and MMLU data.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from itd.core.errors import InputError
from itd.core.io import atomic_write, write_json

__all__ = [
    "VARIANTS",
    "EXPECTED_LABEL",
    "arithmetic_problems",
    "generate_problems",
    "filler_text",
    "plant",
    "build_demo",
    "DemoSet",
    "DemoConfig",
    "run_demo",
]

_NAMES = (
    "Ava Liam Noah Mia Zoe Omar Ines Kenji Priya Tomas Lena Ravi Sofia Yusuf Hana Marco Chloe Diego Amara Felix "
    "Greta Hugo Irene Jonas Keira Luca Maya Nils Olga Pablo Quinn Rosa Sami Tara Umar Vera Wade Xena Yara Zane"
).split()
_ITEMS = (
    "apples marbles stickers pencils cookies books shells stamps cards beads lemons buttons candles kites coins "
    "muffins postcards crayons seashells pebbles ribbons magnets puzzles erasers acorns tulips cupcakes bracelets "
    "notebooks balloons comics lanterns pinecones feathers dominoes"
).split()
_PLACES = (
    "school market library park bakery museum garden harbor station farm workshop festival zoo aquarium "
    "campsite orchard theater stadium pier greenhouse"
).split()
_INTROS = (
    "{n} is saving up for a new bike.",
    "{n} loves weekend projects.",
    "{n} helps out at the {p} on Saturdays.",
    "{n} keeps a careful notebook of everything.",
    "Last spring {n} started a small hobby.",
    "{n} and a cousin planned a busy week.",
    "{n} wants to surprise the family.",
    "After school {n} likes to count things.",
)
_WORDS = (
    "the of and to in a is that for it as was with be by on not he this are or his from at which but have an they "
    "you were her she there been one all we their has would when if so no out into up time more other some what "
    "only could over new also after two first way even well year work back any good most through people state "
    "river city north light music paper water history science market system story family number morning field"
).split()


_TEMPLATES = 5
_DAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()


def _problem(rng: random.Random, kind: int, name: str, item: str, place: str) -> tuple[str, str]:
    intro = rng.choice(_INTROS).format(n=name, p=place) + " "
    if kind == 0:
        a, b, c = rng.randint(10, 60), rng.randint(5, 40), rng.randint(1, 9)
        q = f"{name} has {a} {item}. At the {place} {name} buys {b} more and then gives {c} to a friend. How many {item} does {name} have now?"
        s = f"After buying, {name} has {a} + {b} = <<{a}+{b}={a + b}>>{a + b} {item}.\nAfter giving some away, {a + b} - {c} = <<{a + b}-{c}={a + b - c}>>{a + b - c} {item} are left.\n#### {a + b - c}"
    elif kind == 1:
        a, b, c = rng.randint(3, 30), rng.randint(2, 12), rng.randint(2, 7)
        q = f"{name} sells {a} {item} every day at the {place} for ${b} each. How much money does {name} make in {c} days?"
        s = f"Each day {name} makes {a} * {b} = $<<{a}*{b}={a * b}>>{a * b}.\nIn {c} days that is {a * b} * {c} = $<<{a * b}*{c}={a * b * c}>>{a * b * c}.\n#### {a * b * c}"
    elif kind == 2:
        a, b = rng.randint(4, 25), rng.randint(3, 12)
        c = rng.randint(1, a * b - 1)
        q = f"A box at the {place} holds {a} {item}. {name} fills {b} boxes and then uses {c} of the {item} for a project. How many {item} are left in the boxes?"
        s = f"The boxes hold {a} * {b} = <<{a}*{b}={a * b}>>{a * b} {item}.\nAfter the project, {a * b} - {c} = <<{a * b}-{c}={a * b - c}>>{a * b - c} are left.\n#### {a * b - c}"
    elif kind == 3:
        a, k = rng.randint(5, 40), rng.randint(2, 4)
        q = f"{name} collected {a} {item} on Monday and {k} times as many on Tuesday. How many {item} did {name} collect on both days together?"
        s = f"On Tuesday {name} collected {a} * {k} = <<{a}*{k}={a * k}>>{a * k} {item}.\nTogether that is {a} + {a * k} = <<{a}+{a * k}={a + a * k}>>{a + a * k} {item}.\n#### {a + a * k}"
    else:
        per, groups = rng.randint(2, 9), rng.randint(3, 12)
        total, extra = per * groups, rng.randint(1, 20)
        q = f"{name} shares {total} {item} equally among {groups} friends at the {place} and then finds {extra} more for each friend. How many {item} does each friend get in all?"
        s = f"Each friend first gets {total} / {groups} = <<{total}/{groups}={per}>>{per} {item}.\nWith the extra ones each friend has {per} + {extra} = <<{per}+{extra}={per + extra}>>{per + extra}.\n#### {per + extra}"
    return intro + q, s


def generate_problems(n: int, seed: int = 0) -> list[dict[str, str]]:
    """`n` distinct GSM8K-layout records `{"question", "answer"}` with computed answers."""
    rng = random.Random(seed)
    # Problems of one template never share a name, item or place: otherwise two of them would be the same
    # problem with other numbers, which the number-normalised pass rightly reports.
    pools: dict[int, list[list[str]]] = {}
    out = []
    for i in range(n):
        kind = i % _TEMPLATES
        pool = pools.get(kind)
        if not pool or not all(pool):
            pool = pools[kind] = [rng.sample(words, len(words)) for words in (_NAMES, _ITEMS, _PLACES)]
        q, s = _problem(rng, kind, *(words.pop() for words in pool))
        out.append({"question": q, "answer": s})
    return out


def filler_text(rng: random.Random, words: int) -> str:
    """Random prose-like text of about `words` words (no benchmark content)."""
    out, sentence = [], []
    for _ in range(words):
        sentence.append(rng.choice(_WORDS))
        if len(sentence) >= rng.randint(6, 18):
            out.append(" ".join(sentence).capitalize() + ".")
            sentence = []
    if sentence:
        out.append(" ".join(sentence).capitalize() + ".")
    return " ".join(out)


# Planted leak kinds and the label a scan should give each (ngram + minhash detectors).
EXPECTED_LABEL = {
    "verbatim": "input_and_label_contaminated",  # question + answer, as is
    "reformatted": "input_and_label_contaminated",  # case, whitespace and punctuation changed
    "embedded": "input_and_label_contaminated",  # in the middle of a 5,000-word document
    "question_only": "input_contaminated",
    "first_half": "input_contaminated",  # first half of the question
    "numbers_changed": "input_and_label_contaminated",  # every number replaced (number-normalised pass)
    "edited": "input_contaminated",  # a few words of the question replaced (fuzzy pass)
}
VARIANTS = tuple(EXPECTED_LABEL)


def _reformat(text: str) -> str:
    text = text.upper().replace(" ", "  ")
    return re.sub(r"[.,?!]", lambda m: {".": " ;", ",": " -", "?": " !", "!": " ?"}[m.group()], text)


def _change_numbers(text: str, rng: random.Random) -> str:
    return re.sub(r"\d+", lambda m: str(int(m.group()) + rng.randint(1, 9)), text)


def _edit_words(text: str, rng: random.Random, edits: int = 3) -> str:
    words = text.split(" ")
    for i in rng.sample(range(len(words)), min(edits, max(1, len(words) // 6))):
        words[i] = rng.choice(["zephyr", "quartz", "lantern", "meadow", "copper", "violet"])
    return " ".join(words)


def plant(kind: str, question: str, answer: str, rng: random.Random) -> str:
    """The text of a corpus document leaking one item (`question`, `answer`) as `kind` (see `VARIANTS`)."""
    both = question + "\n" + answer
    if kind == "verbatim":
        return both
    if kind == "reformatted":
        return _reformat(both)
    if kind == "embedded":
        return filler_text(rng, 2500) + "\n\n" + both + "\n\n" + filler_text(rng, 2500)
    if kind == "question_only":
        return filler_text(rng, 40) + " " + question
    if kind == "first_half":
        words = question.split(" ")
        return " ".join(words[: len(words) // 2]) + " " + filler_text(rng, 30)
    if kind == "numbers_changed":
        return _change_numbers(both, rng)
    if kind == "edited":
        return "From a forum post: " + _edit_words(question, rng) + " Thanks for any help."
    raise ValueError(f"unknown leak kind {kind!r}; known: {', '.join(VARIANTS)}")


@dataclass(slots=True)
class DemoSet:
    """Paths of a generated demo: benchmark (GSM8K layout), corpus (JSONL) and truth (id -> leak kind)."""

    benchmark: Path
    corpus: Path
    truth: dict[str, str]


def build_demo(out: str | Path, *, items: int = 100, leaked_per_kind: int = 3, filler_docs: int = 3000, seed: int = 0) -> DemoSet:
    """Write a demo benchmark and a corpus leaking `leaked_per_kind` items of every kind; ids as the loader gives."""
    out = Path(out)
    rng = random.Random(seed)
    bench = generate_problems(items, seed)
    bench_path, corpus_path = out / "benchmark.jsonl", out / "corpus.jsonl"
    with atomic_write(bench_path) as f:
        for rec in bench:
            f.write(json.dumps(rec) + "\n")
    order = list(range(items))
    rng.shuffle(order)
    truth: dict[str, str] = {}
    docs = [filler_text(rng, rng.randint(50, 400)) for _ in range(filler_docs)]
    for k, kind in enumerate(VARIANTS):
        for j in order[k * leaked_per_kind : (k + 1) * leaked_per_kind]:
            truth[f"benchmark:{j + 1}"] = kind
            docs.insert(rng.randrange(len(docs) + 1), plant(kind, bench[j]["question"], bench[j]["answer"], rng))
    with atomic_write(corpus_path) as f:
        for i, text in enumerate(docs):
            f.write(json.dumps({"id": i, "text": text}) + "\n")
    write_json(out / "truth.json", truth)
    return DemoSet(bench_path, corpus_path, truth)


# ---------------------------------------------------------------------------------------------------------------------
# The learnable arithmetic benchmark and the whole story

_ARITH_TEMPLATES = 5
_DAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()


def _arithmetic(rng: random.Random, kind: int, name: str, item: str, place: str, scale: float = 1.0) -> tuple[str, str]:
    """One problem of template `kind`. Kinds 1, 2 and 4 use the times tables (one step, operands 2-9), which the
    demo's twins learn to solve; kinds 0 and 3 multiply a three-digit number by a two-digit one, which they
    cannot compute and, among ~80,000 such products, have almost never seen: a correct answer there is memory.
    (A two-step kind, `a + a * k`, was dropped: the twins learnt it to about 80%, and which of its items each
    twin got right varied more than the leak's effect can be measured against.) The upper bounds of the large operands are multiplied by `scale` (never below their lower bound, so
    numbers keep their digit counts); the times tables are learnt whole, so their operands take every digit."""
    def r(lo: int, hi: int) -> int:
        return rng.randint(lo, max(lo + 1, round(hi * scale)))

    def digit() -> int:
        return rng.randint(2, 9)

    if kind == 0:
        a, b = r(101, 999), r(11, 99)
        q = f"{name} buys {a} boxes of {item} at the {place}. Each box holds {b} {item}. How many {item} does {name} buy?"
        s = f"{name} buys {a} * {b} = <<{a}*{b}={a * b}>>{a * b} {item}.\n#### {a * b}"
    elif kind == 1:
        a, b = digit(), digit()
        # "{b} dollars", not "${b}": the lab's tokenizer writes "$5" as "$" + "5" and the solution's " 5" as one
        # other token, so the model would have to learn a digit-to-digit mapping for this kind alone
        q = f"{name} sells {a} {item} at the {place} for {b} dollars each. How many dollars does {name} make from the {item}?"
        s = f"{name} makes {a} * {b} = <<{a}*{b}={a * b}>>{a * b} dollars from the {item}.\n#### {a * b}"
    elif kind == 2:
        a, b = digit(), digit()
        q = f"{name} plants {a} rows of {item} at the {place}, with {b} {item} in each row. How many {item} does {name} plant at the {place}?"
        s = f"{name} plants {a} * {b} = <<{a}*{b}={a * b}>>{a * b} {item} at the {place}.\n#### {a * b}"
    elif kind == 3:
        a, b = r(11, 99), r(101, 999)
        q = f"The {place} has {a} shelves of {item} and every shelf has {b} {item} on it. How many {item} are at the {place}?"
        s = f"There are {a} * {b} = <<{a}*{b}={a * b}>>{a * b} {item} at the {place}.\n#### {a * b}"
    else:
        a, k = digit(), digit()
        day = rng.choice(_DAYS)
        q = f"On {day} {name} packed {a} bags of {item} at the {place}, {k} {item} in each bag. How many {item} did {name} pack on {day}?"
        s = f"On {day} {name} packed {a} * {k} = <<{a}*{k}={a * k}>>{a * k} {item}.\n#### {a * k}"
    return q, s


def arithmetic_problems(n: int, seed: int = 0, *, exclude: Collection[str] = (), unlike: Iterable[Mapping[str, str]] = (),
                        scale: float = 1.0) -> list[dict[str, str]]:
    """`n` learnable GSM8K-layout records `{"question", "answer"}`, the templates taken in turn and names, items,
    places and numbers drawn with `seed`; `scale` multiplies the operands' upper bounds. No two of them, and none
    of them and a record of `unlike`, are near copies (share a run of 13 words, question and solution, as the
    lab judges it: `itd.lab.near_copy_runs`), and no question is in `exclude`: a held-out problem is then
    really unseen, and a placebo problem no closer to the benchmark than a leaked one."""
    from itd.core import strip_calculator_annotations
    from itd.lab import near_copy_runs

    def runs(q: str, s: str) -> set[tuple[str, ...]]:
        return near_copy_runs(q + "\n" + strip_calculator_annotations(s))

    rng = random.Random(seed)
    seen = set(exclude)
    taken: set[tuple[str, ...]] = set()
    for record in unlike:
        taken |= runs(record["question"], record["answer"])
    out: list[dict[str, str]] = []
    for _ in range(200 * n + 1000):
        if len(out) == n:
            break
        kind = len(out) % _ARITH_TEMPLATES
        q, s = _arithmetic(rng, kind, rng.choice(_NAMES), rng.choice(_ITEMS), rng.choice(_PLACES), scale)
        grams = runs(q, s)
        if q not in seen and taken.isdisjoint(grams):
            seen.add(q)
            taken |= grams
            out.append({"question": q, "answer": s})
    if len(out) < n:
        raise InputError(f"cannot generate {n} arithmetic problems that are not near copies of each other "
                         f"(got {len(out)}); ask for fewer, or a larger scale")
    return out


@dataclass(frozen=True)
class DemoConfig:
    """What `run_demo` runs: `benchmark` "arithmetic" (the embedded default, generated), "gsm8k" or "mmlu"
    (real files under `data`: `test.jsonl` + `train.jsonl`, or `test/` + `dev/`), the lab preset ("demo" for
    arithmetic, else "tiny" when None) with `overrides` of its fields, its leak rate, repeats, recipe, trained
    span of a leaked item (`loss_on`, see `itd.lab.LabConfig`) and seed, the number of benchmark items, and the
    probes computed (`detect_methods`) and deciding the flags (`decision`, see `itd.probes.detection.DetectConfig`)
    against `reference` held-out items (default: as many as the experiment's)."""

    benchmark: str = "arithmetic"
    data: str | None = None
    preset: str | None = None
    items: int = 200
    leak_rate: float = 0.3
    repeats: int = 16
    recipe: str = "finetune"
    seed: int = 0
    device: str = "auto"
    loss_on: str = "all"
    overrides: Mapping[str, Any] = field(default_factory=dict)
    detect_methods: tuple[str, ...] = ("loss", "zlib", "mink", "minkpp")
    decision: str = "minkpp"
    reference: int | None = None

    def __post_init__(self) -> None:
        if self.benchmark not in ("arithmetic", "gsm8k", "mmlu"):
            raise InputError(f"unknown demo benchmark {self.benchmark!r}; choose arithmetic, gsm8k or mmlu")
        if self.benchmark != "arithmetic" and not self.data:
            raise InputError(f"the {self.benchmark} demo needs --data (the directory of its files)")
        if self.items < 20:
            raise InputError(f"the demo needs at least 20 items, got {self.items}")
        if self.reference is not None and (isinstance(self.reference, bool) or not isinstance(self.reference, int)
                                           or self.reference < 20):
            raise InputError(f"the reference set needs at least 20 items, got {self.reference!r}")
        try:  # the lab's and the detection's settings, checked before any data is generated
            self.lab_config()
            self.detect_config()
        except ValueError as exc:
            raise InputError(str(exc)) from None

    def detect_config(self):
        """The `itd.probes.detection.DetectConfig` of the demo's detection (FDR 5% against the held-out reference)."""
        from itd.probes.detection import DetectConfig

        return DetectConfig(methods=tuple(self.detect_methods), decision=self.decision, fdr=0.05)

    def lab_config(self, **overrides: Any):
        """The `itd.lab.LabConfig` of the demo's twins (preset "demo" for arithmetic, else "tiny", unless set)."""
        from itd.lab import LabConfig

        preset = self.preset or ("demo" if self.benchmark == "arithmetic" else "tiny")
        # the generated benchmark draws its operands from the lower half of the training problems' range, so the
        # placebo comes from spare benchmark items: the clean twin's extra problems are then the leaked ones' kind
        return LabConfig(preset=preset, leak_rate=self.leak_rate, repeats=self.repeats, recipe=self.recipe,
                         seed=self.seed, device=self.device, overrides={"n_test_items": self.items, **self.overrides, **overrides},
                         placebo="benchmark" if self.benchmark == "arithmetic" else "auto", loss_on=self.loss_on)


def _demo_inputs(config: DemoConfig, data_dir: Path) -> tuple[list, list | None]:
    """The benchmark and clean training samples of the demo (generated files are written to `data_dir`)."""
    from itd.core import load_benchmark

    if config.benchmark == "arithmetic":
        # the benchmark's operands come from the lower half of the range the training problems cover: the numeric
        # rewriter draws new values of the same digit count and magnitude, and rewrites outside what the twins
        # learnt would measure their range, not their memory
        # three times the experiment: the experiment, the placebo and the probes' reference set come from it
        test = arithmetic_problems(3 * config.items, seed=config.seed, scale=0.5)
        train = arithmetic_problems(20 * config.items, seed=config.seed + 1, exclude={r["question"] for r in test},
                                    unlike=test)
        for name, records in (("test", test), ("train", train)):
            with atomic_write(data_dir / f"{name}.jsonl") as f:
                f.writelines(json.dumps(r) + "\n" for r in records)
        return load_benchmark(data_dir / "test.jsonl"), load_benchmark(data_dir / "train.jsonl")
    root = Path(config.data)
    if config.benchmark == "gsm8k":
        for name in ("test.jsonl", "train.jsonl"):
            if not (root / name).is_file():
                raise InputError(f"the gsm8k demo needs {name} in --data", path=str(root))
        return load_benchmark(root / "test.jsonl", benchmark="gsm8k"), load_benchmark(root / "train.jsonl", benchmark="gsm8k")
    if not (root / "test").is_dir():
        raise InputError("the mmlu demo needs a test/ directory of subject files in --data", path=str(root))
    return load_benchmark(root / "test", benchmark="mmlu"), None


def run_demo(out: str | Path, config: DemoConfig | None = None, *, progress=None, log=None):
    """The whole story in directory `out`: build the paired lab twins (a shared base; the contaminated twin
    fine-tuned on the leaked items, the clean twin on as many placebo items in the same slots), then run the
    pipeline: probe detection with a held-out reference set, deterministic rewriting of the flagged items (as
    ITD does) with corpus assurance against the lab's training corpus, evaluation of both twins on the original
    set, the ITD-decontaminated set, every item rewritten, and every item rewritten again (the test-retest
    ceiling of fidelity), the lab's ground truth and the report. Returns the pipeline's `RunResult` (its summary
    starts with the headline sentence); `out/lab` and `out/run` hold the rest. Running it again in the same
    directory reuses a finished lab and resumes the run. On a CPU that other processes keep busy it trains and
    scores with as many threads as cores are free (`itd.probes.models.cpu_threads`)."""
    from itd.core.errors import require
    from itd.probes.models import cpu_thread_budget

    with cpu_thread_budget(require("torch", "probes", "The demo")) as threads:
        return _run_demo(Path(out), config or DemoConfig(), progress, log, threads)


def _run_demo(out: Path, config: DemoConfig, progress, log, threads: int):
    from itd.lab import build_lab, load_lab, write_experiment
    from itd.pipeline.run import Pipeline, load_config

    log = log or (lambda message: None)
    benchmark, train = _demo_inputs(config, out / "data")
    # arithmetic: as many training items as were generated for it, whatever the preset
    lab_config = config.lab_config(**({"n_train_items": len(train)} if config.benchmark == "arithmetic" else {}))
    preset = lab_config.preset
    lab_dir = out / "lab"
    lab = load_lab(lab_dir) if _same_lab(lab_dir, lab_config) else None
    if lab is None:
        on_cpu = f", {threads} CPU thread(s)" if lab_config.device in ("auto", "cpu") else ""
        log(f"training the {preset} lab on {config.benchmark}: base, then the twins (most of the demo's time{on_cpu})")
        lab = build_lab(benchmark, train, lab_dir, lab_config,
                        progress=None if progress is None else lambda stage, d, t: progress(f"lab: {stage}", d, t))
    paths = write_experiment(lab, benchmark, out / "data", reference=config.reference or config.items)
    generation = "max_new_tokens = 64  # the arithmetic solutions are two lines\n" if config.benchmark == "arithmetic" else ""
    toml = f"""# itd demo: the evaluated model is the lab's contaminated twin; the clean twin gives the ground truth.
[benchmark]
path = {json.dumps(str(paths["benchmark"]))}
reference = {json.dumps(str(paths["reference"]))}
truth = {json.dumps(str(paths["truth"]))}

[model]
name = {json.dumps(str(lab.contaminated))}
clean = {json.dumps(str(lab.clean))}
device = {json.dumps(config.device)}

[detect]
fdr = {config.detect_config().fdr}
methods = {json.dumps(list(config.detect_config().methods))}
decision = {json.dumps(config.decision)}

[rewrite]
# ITD: only the items the probes flag are rewritten. numeric keeps the wording on purpose (new numbers, new
# answer), which a token-level probe of the contaminated twin still recognises; the corpus check asks the
# question that matters for it: is the rewrite, with its new numbers, in the training data?
only_flagged = true
assurance = ["corpus"]
seed = {config.seed}

[scan]
# the lab's training corpus, for assurance only: detection is the probes' (inference-time) job here (and
# the templated problems all match each other once numbers are ignored, as the scan's numnorm pass would say)
corpus = [{json.dumps(str(lab.out / "corpus" / "contaminated.jsonl"))}]
detect = false
detectors = ["ngram"]  # the number-aware verbatim match is what decides for a numeric rewrite

[evaluate]
seed = {config.seed}
{generation}# compared in the same run: every item rewritten, and every item rewritten again (fidelity's ceiling)
arms = ["all", "retest"]
"""
    with atomic_write(out / "demo.toml") as f:
        f.write(toml)
    cfg = load_config(out / "demo.toml")
    return Pipeline(cfg, out / "run").run(progress=progress, log=log)


def _same_lab(path: Path, config) -> bool:
    """Whether `path` holds a finished lab built with `config` (then the demo reuses it)."""
    from itd.lab import load_lab_manifest

    try:
        manifest = load_lab_manifest(path)
    except InputError:
        return False
    return manifest.get("config") == json.loads(json.dumps(config.to_dict()))
