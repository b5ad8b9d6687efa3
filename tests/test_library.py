"""`itd` as a library and a command people read: the public API visible to dir(), help() and type checkers,
`python -m itd`, the package metadata, and the command line's help and tables as they reach a file."""

from __future__ import annotations

import configparser
import json
import os
import pydoc
import subprocess
import sys
import typing
from pathlib import Path

import pytest

import itd

ROOT = Path(__file__).resolve().parents[1]


def run_itd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python -m itd` in a subprocess, its stdout a pipe (not a terminal), no COLUMNS set."""
    base = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    return subprocess.run([sys.executable, "-m", "itd", *args], capture_output=True, text=True, timeout=300,
                          env={**base, "NO_COLOR": "1", "PYTHONPATH": str(ROOT), **(env or {})})


def test_dir_and_help_show_the_lazy_public_api():
    assert set(itd.__all__) <= set(dir(itd))
    text = pydoc.render_doc(itd, renderer=pydoc.plaintext)
    for name in ("load_benchmark", "scan", "check", "detect", "rewrite", "evaluate", "Pipeline", "ScanConfig"):
        assert name in text, name
    assert "samples: 'Sequence[Sample]'" in text or "samples: Sequence[Sample]" in text  # signatures, not just names


def test_import_itd_stays_light():
    code = "import sys, itd; print(sorted({'itd.core', 'itd.corpus.scan', 'numpy', 'torch'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.stdout.strip() == "[]", out.stderr


def test_public_functions_that_take_models_are_typed():
    from itd.core.errors import InputError
    from itd.probes import detection, models
    from itd.probes.detection import score_samples
    from itd.probes.models import LoadedModel, ScoringModel, resolve_model
    from itd.rewriters.assure import ModelAssurance

    # the annotations name itd.probes.models' types (imported for type checkers only, so `import itd.probes.detection` stays light)
    hints = lambda f: typing.get_type_hints(f, localns={**vars(detection), **vars(models)})  # noqa: E731
    model_ref = hints(itd.detect)["model"]
    assert set(typing.get_args(model_ref)) >= {ScoringModel, str}
    assert hints(itd.detect)["reference_model"] == model_ref | None
    assert hints(ModelAssurance.__init__)["model"] == model_ref
    assert hints(score_samples)["lm"] is ScoringModel
    loaded = LoadedModel(model=object(), tokenizer=object(), name="m", device="cpu", dtype="float32", context_length=8)
    assert resolve_model(loaded) is loaded
    with pytest.raises(InputError, match="cannot score with a int"):
        resolve_model(3)


def test_package_metadata_license_and_typing_marker():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg", encoding="utf-8")
    meta = cfg["metadata"]
    assert meta["license"] == "Apache-2.0" and meta["license_files"].strip() == "LICENSE" and meta["author"].strip()
    license_text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert "END OF TERMS AND CONDITIONS" in license_text
    assert (ROOT / "itd" / "py.typed").is_file() and "py.typed" in cfg["options.package_data"]["itd"]
    # the pre-commit hook installs `itd` alone: nothing in it may pull scipy (datasketch does: the minhash extra)
    core = cfg["options"]["install_requires"]
    assert "datasketch" not in core and "scipy" not in core and "torch" not in core
    assert "datasketch" in cfg["options.extras_require"]["minhash"] and "datasketch" in cfg["options.extras_require"]["all"]


def test_python_m_itd_and_help_that_is_never_cut():
    version = run_itd("--version")
    assert version.returncode == 0 and itd.__version__ in version.stdout
    helped = run_itd("--help", env={"COLUMNS": "80"})
    assert helped.returncode == 0
    commands = helped.stdout.split("Commands:")[1]
    assert "..." not in commands
    listed = {line.split()[0] for line in commands.splitlines() if line.startswith("  ") and not line.startswith("   ")}
    assert listed == {"check", "dcpdd-table", "demo", "detect", "index", "lab", "rewrite", "run", "scan"}
    assert all(len(line) <= 80 for line in helped.stdout.splitlines())


def test_scan_tables_are_whole_when_redirected(shared_data, tmp_path):
    """`itd scan ... > out` keeps every cell whole (no 80-column wrap, no "…"), and the columns say what they hold."""
    lines = (shared_data / "gsm8k" / "test.jsonl").read_text(encoding="utf-8").splitlines()[:60]
    bench = tmp_path / "a_rather_long_benchmark_file_name_for_the_table.jsonl"
    bench.write_text("\n".join(lines) + "\n", encoding="utf-8")
    records = [json.loads(lines[i]) for i in (3, 7)]
    docs = [r["question"] + "\n" + r["answer"] for r in records] + ["unrelated filler text " * 30] * 20
    corpus = tmp_path / "training_corpus_with_a_long_name.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    out = run_itd("scan", str(bench), "--corpus", str(corpus), "--detector", "ngram,minhash", "-q")
    assert out.returncode == 1, out.stderr
    assert "…" not in out.stdout
    header = next(line for line in out.stdout.splitlines() if "best evidence" in line)
    for column in ("n-gram coverage q/a", "same, numbers masked", "minhash similarity",
                   "best evidence: document [characters] similarity (detector)"):
        assert column in header
    rows = [line for line in out.stdout.splitlines() if "_with_a_long_name.jsonl:" in line]
    assert len(rows) == 2 and all("input_and_label_contaminated" in row for row in rows)
    assert max(len(line) for line in out.stdout.splitlines()) > 80


def test_the_flat_module_paths_still_import_as_the_moved_modules_with_a_warning():
    """Code written against the flat layout (`itd.scan`, `itd.models`, ...) keeps working: the old path is the
    moved module itself, so a monkeypatch through either name patches both, and it says where the module went."""
    from itd.moved import MOVED

    code = (
        "import importlib, json, sys, warnings\n"
        "from itd.moved import MOVED\n"
        "out = {}\n"
        "for old, new in MOVED.items():\n"
        "    with warnings.catch_warnings(record=True) as caught:\n"
        "        warnings.simplefilter('always')\n"
        "        module = importlib.import_module(old)\n"
        "    out[old] = [module is importlib.import_module(new), module.__spec__.name == new,\n"
        "                [str(w.message) for w in caught if w.category is DeprecationWarning]]\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    result = json.loads(done.stdout)
    assert set(result) == set(MOVED)
    for old, (same, spec_kept, warned) in result.items():
        assert same and spec_kept, old
        assert warned == [f"{old} moved to {MOVED[old]}; import it from there"], old
    assert callable(itd.scan) and itd.scan.__module__ == "itd.corpus.scan"
