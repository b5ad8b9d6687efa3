"""The core every stage stands on: the `Sample` record and benchmark files, text, numbers, io, errors, registries.

    sample.py      the `Sample` record that travels through every stage, and its source
    formats.py     benchmark formats and their layouts
    load.py        loaders: files (GSM8K JSONL, MMLU CSV in three layouts, generic JSONL/CSV with a field map), HF
    write.py       writers that emit samples back in their source layout, atomically
    text.py        normalisation, tokenisation, vectorised n-gram hashing
    numbers.py     the one reader of numbers in text: digits, words, fractions, percentages, money, units
    render.py      the text a model scores or trains on, per rendering
    stats.py       conformal p-values, FDR, bootstrap intervals, set-level tests, AUROC
    io.py          atomic writes (one file, or several as one unit) and manifests
    paths.py       input and output path checks before any work
    urls.py        where inputs live: local paths, fsspec URLs, `hf://` datasets
    errors.py      InputError and the other errors the CLI maps to exit codes; optional imports
    registry.py    typed registries with "did you mean" errors; `create(name, config)` builds a plugin
    validate.py    type checks of configuration values (a bool is never a number)
    progress.py    the progress callback shapes every stage reports in, and their adapters
    processes.py   worker processes that end with their parent

Core imports nothing from the stages. The benchmark-file API is exported here (`from itd.core import Sample,
load_benchmark`); `import itd` exports it too.

Every sample records its `layout`, the exact shape it was read from:

- ``gsm8k``: JSONL ``{"question", "answer"}``, the answer a worked solution ending ``#### N``;
- ``mmlu-index``: CSV with header ``question,choice0,choice1,choice2,choice3,answer``, 0-based index answers;
- ``mmlu-letter``: the original headerless MMLU CSV ``question,A,B,C,D,answer`` with letter answers;
- ``mmlu-index-noheader`` / ``mmlu-letter-header``: the two rarer mixes of the above;
- ``mmlu-hf``: JSONL records of Hugging Face ``cais/mmlu``: ``question, subject, choices[4], answer`` (int);
- ``jsonl`` / ``csv``: generic files; with a field map the layout is ``jsonl:{...}`` / ``csv:{...}``, the map's
  non-default entries as compact JSON.

Records without an id field get the positional id ``<file stem>:<line>``. Positional ids are not written back:
they are derived again from the output file. The same goes for the subject of an MMLU CSV file (its name).
"""

from itd.core.formats import FORMATS, BenchmarkFormat
from itd.core.load import detect_format, load_benchmark, load_hf_dataset, not_a_benchmark, parse_hf_spec
from itd.core.sample import Sample, Source, gsm8k_final_answer, strip_calculator_annotations
from itd.core.write import write_benchmark

__all__ = [
    "Source",
    "Sample",
    "strip_calculator_annotations",
    "gsm8k_final_answer",
    "BenchmarkFormat",
    "FORMATS",
    "detect_format",
    "not_a_benchmark",
    "load_benchmark",
    "load_hf_dataset",
    "parse_hf_spec",
    "write_benchmark",
]
