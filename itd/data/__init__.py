"""Benchmark data layer: the `Sample` record that travels through every stage, loaders and writers.

Loaders (GSM8K JSONL, MMLU CSV in three layouts, generic JSONL/CSV with a field map, HF datasets) and writers
that emit samples back in their source layout live here too: `sample` (the record), `formats` (the formats and
their layouts), `read` (files and loaders) and `write`.

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

from itd.data.formats import FORMATS, BenchmarkFormat
from itd.data.read import detect_format, load_benchmark, load_hf_dataset, not_a_benchmark, parse_hf_spec
from itd.data.sample import Sample, Source, gsm8k_final_answer, strip_calculator_annotations
from itd.data.write import write_benchmark

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
