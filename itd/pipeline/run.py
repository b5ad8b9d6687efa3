"""The end-to-end pipeline: load, detect, rewrite (verify, assure), evaluate, report, in one run directory.

`Pipeline.from_config("run.toml").run()` does what `itd run run.toml` does. A run directory holds:

    config.toml          the effective config (every key, defaults filled in; URL credentials redacted)
    manifest.json        tool version, config, SHA-256 of every input, model names, seeds (never a key)
    items.jsonl          one record per benchmark item: scores, p-values, label, evidence, rewrite attempts and
                         checks, predictions before and after
    summary.json         the figures of the report (also what `--json` prints)
    report.html          the self-contained report with plots
    decontaminated/      the decontaminated benchmark in its source layout
    rewrite-all.jsonl, rewrite-retest.jsonl   the extra rewrites of `[evaluate] arms` (every item; again, reseeded)
    lm_eval/             the decontaminated set as an lm-evaluation-harness task (`lm_eval --include_path`)
    detection.jsonl, scan.jsonl, rewrite.jsonl   each stage's own output
    state/               journals of finished model calls and the LLM reply cache

Resuming is running again: every model call goes through a journal in `state/` (fixed chunks, see
`itd.probes.models.score_texts` and `itd.evaluation.evaluate`) and every LLM call through the reply cache, so a run
killed at any point and started again repeats no finished call and, every stage being deterministic in its
inputs and seeds, writes the same results. A run directory holding a run of another config is refused.

Over 600 lines because the run is one state machine (the config, the run directory, resume, and each stage's
call in order); each stage's logic is in its own package.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from itd.core import Sample, load_benchmark, write_benchmark
from itd.core.errors import InputError
from itd.core.io import Journal, atomic_write, build_manifest, redact_urls, write_json
from itd.core.progress import StageProgress, prefixed, under
from itd.core.registry import config_from_table, did_you_mean, typed_value
from itd.probes.detection import DetectConfig
from itd.probes.methods import uses_reference_model
from itd.rewriters.verify import VerifyConfig

__all__ = [
    "BenchmarkConfig",
    "ModelConfig",
    "ScanSection",
    "RewriteConfig",
    "ReportConfig",
    "PipelineConfig",
    "Pipeline",
    "RunResult",
    "load_config",
]

Progress = StageProgress
"""`progress(stage, done, total)`, called as each stage advances."""
ARMS = ("all", "retest")
"""Extra decontaminated sets a run can compare (`[evaluate] arms`)."""
Log = Callable[[str], None]


@dataclass(frozen=True)
class BenchmarkConfig:
    """The benchmark (`path`, a file or directory), its `format`, and the optional side inputs: a clean
    `reference` set of the same kind (calibrates the probes), the `fewshot` split (GSM8K train, MMLU dev) and
    a `truth` file (`leaked`/`unseen` ids, e.g. a contamination-lab manifest) to measure against."""

    path: str = ""
    format: str = "auto"
    reference: str | None = None
    fewshot: str | None = None
    truth: str | None = None


@dataclass(frozen=True)
class ModelConfig:
    """The evaluated model (`name`: a local directory or hub name) and, optionally, a `clean` twin or reference
    model of the same family that never saw the benchmark (fidelity, resistance, inflation removed), and a
    `reference` model for the reference-model probes (`[detect] methods` with `reference`, `answer_reference`):
    one that cannot have seen the benchmark, such as the base model of the fine-tune evaluated.
    With `base_url` `name` and `clean` are model names on an OpenAI-compatible endpoint (evaluation only: an
    endpoint gives no token probabilities to probe)."""

    name: str = ""
    clean: str | None = None
    reference: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    base_url: str | None = None
    api: str = "chat"
    api_key_env: tuple[str, ...] = ("ITD_API_KEY", "OPENAI_API_KEY")
    concurrency: int = 8

    def __post_init__(self) -> None:
        if self.api not in ("chat", "completions"):
            raise InputError(f"model.api must be 'chat' or 'completions', got {self.api!r}")


@dataclass(frozen=True)
class ScanSection:
    """Corpus-side detection: the training `corpus` (files, directories, globs) and the scan's `detectors`;
    no corpus, no scan. `detect = false` keeps the corpus for assurance only (nothing is flagged by it).
    `engine`: "local" (a process pool of `workers`) or "ray" (the cluster at `ray_address`, or a local one).
    `detectors` defaults to the CLI's (`itd.corpus.scan.default_detectors()`). Each detector's settings are its config, written as a sub-table named after it (`[scan.semantic]
    threshold = 0.85`), kept in `detector_options`."""

    corpus: tuple[str, ...] = ()
    detect: bool = True
    detectors: tuple[str, ...] = field(default_factory=lambda: _default_detectors())
    text_field: str = "text"
    layout: str = "auto"
    workers: int = 1
    engine: str = "local"
    ray_address: str | None = None
    detector_options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from itd.corpus.engines import ENGINES
        from itd.corpus.scan import resolve_detector_options

        ENGINES.get(self.engine)  # an unknown engine fails when the config loads, with a did-you-mean
        object.__setattr__(self, "detector_options", resolve_detector_options(self.detector_options))


@dataclass(frozen=True)
class RewriteConfig:
    """What replaces the flagged items. `method`: "auto" (numeric for GSM8K, permute for multiple choice),
    or a registered rewriter. `assurance`: detectors re-run on each rewrite ("model", "corpus"); "auto" is the
    corpus when one is given, else the model. `only_flagged`: rewrite the flagged items only (else all).
    `drop_rejected`: leave items no rewrite passed for out of the decontaminated set (else they stay as they
    were). `mmlu_cf`: the `permute` rewriter also replaces a wrong option by "None of the other choices"
    (MMLU-CF). `math_prompt`, `mcq_prompt`: prompt files of the `llm` rewriter (default: the packaged ones);
    `llm_model` etc.: its endpoint."""

    method: str = "auto"
    rounds: int = 3
    only_flagged: bool = True
    drop_rejected: bool = False
    seed: int = 0
    assurance: tuple[str, ...] = ("auto",)
    mmlu_cf: bool = False
    math_prompt: str | None = None
    mcq_prompt: str | None = None
    llm_model: str | None = None
    llm_base_url: str | None = None
    temperature: float = 0.7

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise InputError(f"rewrite.rounds must be >= 1, got {self.rounds}")
        for a in self.assurance:
            if a not in ("auto", "model", "corpus", "none"):
                raise InputError(f"unknown assurance {a!r}; choose from auto, model, corpus, none")


@dataclass(frozen=True)
class ReportConfig:
    """Outputs beyond the records: `html` report, `lm_eval` task export (named `task`), and how many of the
    most suspicious items the report shows (`top`)."""

    html: bool = True
    lm_eval: bool = True
    task: str | None = None
    top: int = 20


def _default_detectors() -> tuple[str, ...]:
    from itd.corpus.scan import default_detectors

    return default_detectors()


def _eval_config_class():
    from itd.evaluation import EvalConfig

    return EvalConfig


@dataclass(frozen=True)
class PipelineConfig:
    """Every setting of a run, one TOML table per field (`[benchmark]`, `[model]`, `[detect]`, ...).
    `detect` is `itd.probes.detection.DetectConfig` (`enabled = false`, or the older `probes = false`, skips model-side
    detection), `verify` is
    `itd.rewriters.verify.VerifyConfig`, `evaluate` is `itd.evaluation.EvalConfig` (`enabled = false` skips it).
    `arms` (written `[evaluate] arms`) adds decontaminated sets to compare with the configured one: "all" (every
    item rewritten) and "retest" (every item rewritten again with the next seed: the test-retest ceiling of
    fidelity); with a clean model and a truth file they enter the ground truth (`itd.evaluation.ground_truth`)."""

    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    detect: DetectConfig = field(default_factory=DetectConfig)
    probes: bool = True
    scan: ScanSection = field(default_factory=ScanSection)
    rewrite: RewriteConfig = field(default_factory=RewriteConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    evaluate: Any = None
    evaluation: bool = True
    arms: tuple[str, ...] = ()
    report: ReportConfig = field(default_factory=ReportConfig)

    def __post_init__(self) -> None:
        if self.evaluate is None:
            object.__setattr__(self, "evaluate", _eval_config_class()())
        for arm in self.arms:
            if arm not in ARMS:
                raise InputError(f"unknown evaluate.arms entry {arm!r}; choose from {', '.join(ARMS)}")
        if not self.benchmark.path:
            raise InputError("the config needs benchmark.path (the benchmark file or directory)")
        probes_reference = self.probes and uses_reference_model(self.detect.methods)
        if probes_reference and not self.model.reference and not self.model.base_url:
            raise InputError("[detect] methods include a reference-model probe (reference, answer_reference): set "
                             "model.reference, a model that cannot have seen the benchmark")
        if self.model.reference and not probes_reference:
            raise InputError("model.reference is read by the reference-model probes only: add 'reference' or "
                             "'answer_reference' to [detect] methods (with detection enabled)")

    def to_dict(self) -> dict[str, Any]:
        """The config as nested plain values (TOML- and JSON-ready; None values left out), one table per stage."""
        data = _drop_none(dataclasses.asdict(self))
        data["detect"]["enabled"] = data.pop("probes")
        data["evaluate"]["enabled"] = data.pop("evaluation")
        data["evaluate"]["arms"] = list(data.pop("arms"))
        data["scan"].update(data["scan"].pop("detector_options"))  # [scan.NAME] sub-tables
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "config") -> PipelineConfig:
        """Build from nested tables; an unknown key is an InputError naming `where` and the closest key."""
        data = dict(data)
        # The stages' switches are written inside their tables in TOML: [detect] enabled, [evaluate] enabled
        # ([detect] probes, the older spelling, is read too).
        detect = dict(data.pop("detect", {}) or {})
        evaluate = dict(data.pop("evaluate", {}) or {})
        top: dict[str, Any] = {}
        if "enabled" in detect and "probes" in detect:
            raise InputError(f"{where}: [detect] sets both 'enabled' and its older spelling 'probes': keep 'enabled'")
        for key in ("enabled", "probes"):
            if key in detect:
                top["probes"] = typed_value(bool, detect.pop(key), f"{where}: detect.{key}")
        if "enabled" in evaluate:
            top["evaluation"] = typed_value(bool, evaluate.pop("enabled"), f"{where}: evaluate.enabled")
        if "arms" in evaluate:
            top["arms"] = typed_value(tuple[str, ...], evaluate.pop("arms"), f"{where}: evaluate.arms")
        sections = {"benchmark": BenchmarkConfig, "model": ModelConfig, "detect": DetectConfig, "scan": ScanSection,
                    "rewrite": RewriteConfig, "verify": VerifyConfig, "evaluate": _eval_config_class(),
                    "report": ReportConfig}
        bench = data.get("benchmark") or {}
        if isinstance(bench, Mapping) and bench.get("fewshot") and "fewshot" not in evaluate:
            evaluate["fewshot"] = bench["fewshot"]  # one few-shot split for the evaluation and the export
        data["detect"], data["evaluate"] = detect, evaluate
        scan = data.get("scan")
        if isinstance(scan, Mapping):  # [scan.NAME] sub-tables are detector configs
            from itd.detectors import DETECTORS

            scan = dict(scan)
            options = {}
            for key in [k for k, v in scan.items() if isinstance(v, Mapping)]:
                name = DETECTORS.get(key).name if key in DETECTORS else None
                if name is None:
                    raise InputError(f"{where}: [scan.{key}] names no detector{did_you_mean(key, DETECTORS.names())}")
                options[name] = config_from_table(DETECTORS.get(name).Config, scan.pop(key), f"{where}: [scan.{key}]")
            scan["detector_options"] = options
            data["scan"] = scan
        for key in data:
            if key not in sections:
                raise InputError(f"{where}: unknown table [{key}]{did_you_mean(key, sections)}")
        for key, cls_ in sections.items():
            table = data.get(key) or {}
            if not isinstance(table, Mapping):
                raise InputError(f"{where}: [{key}] must be a table")
            top[key] = config_from_table(cls_, table, f"{where}: [{key}]")
        return cls(**top)


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_drop_none(v) for v in value]
    return value


def load_config(path: str | os.PathLike, overrides: Mapping[str, Any] | None = None) -> PipelineConfig:
    """Read a TOML config; `overrides` maps dotted keys ("model.name", "rewrite.rounds") to values that replace
    the file's. Relative paths in the file are relative to the file's directory."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError("no such config file", path=str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        where = re.search(r"\(at line (\d+), column \d+\)$", str(exc))  # Python < 3.14 has no exc.lineno
        message = str(exc)[: where.start()].strip() if where else str(exc)
        raise InputError(f"invalid TOML: {message}", path=str(path), line=int(where.group(1)) if where else None) from None
    _resolve_paths(data, path.parent)
    for key, value in (overrides or {}).items():
        table, _, name = key.rpartition(".")
        if not table:
            raise InputError(f"an override needs a table and a key (e.g. model.name), got {key!r}")
        node = data
        for part in table.split("."):  # scan.ngram.n: the [scan.ngram] sub-table
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise InputError(f"override {key!r}: {part!r} is a value, not a table")
        node[name] = value
    return PipelineConfig.from_dict(data, where=str(path))


_PATH_KEYS = {"benchmark": ("path", "reference", "fewshot", "truth"), "model": ("name", "clean", "reference"),
              "scan": ("corpus",), "rewrite": ("math_prompt", "mcq_prompt"), "detect": ("options.dcpdd.table",)}


def _resolve_paths(data: dict[str, Any], base: Path) -> None:
    def fix(value: Any) -> Any:
        if isinstance(value, str) and value and not os.path.isabs(value) and (base / value).exists():
            return str(base / value)
        return value

    for table, keys in _PATH_KEYS.items():
        for dotted in keys:
            *inner, key = dotted.split(".")
            section = data.get(table)
            for name in inner:  # a sub-table such as [detect.options.dcpdd]
                section = section.get(name) if isinstance(section, dict) else None
            if not isinstance(section, dict):
                continue
            if isinstance(section.get(key), list):
                section[key] = [fix(v) for v in section[key]]
            elif key in section:
                section[key] = fix(section[key])


@dataclass
class RunResult:
    """What a run produced: the summary (figures of the report), the per-item records and the files."""

    out: Path
    summary: dict[str, Any]
    items: list[dict[str, Any]]
    files: dict[str, Path]

    @property
    def contaminated(self) -> bool:
        """Whether any item was flagged (the verdict behind `itd run`'s exit code 1)."""
        return bool(self.summary.get("flagged"))


class Pipeline:
    """A configured run: `Pipeline(config, out).run()`; see the module docstring for the run directory."""

    def __init__(self, config: PipelineConfig, out: str | os.PathLike = "itd-run"):
        self.config = config
        self.out = Path(out)

    @classmethod
    def from_config(cls, path: str | os.PathLike, out: str | os.PathLike | None = None,
                    overrides: Mapping[str, Any] | None = None) -> Pipeline:
        """A pipeline from a TOML file; the run directory defaults to `<config stem>-run` beside it."""
        path = Path(path)
        return cls(load_config(path, overrides), out if out is not None else path.with_name(path.stem + "-run"))

    # ---- the run ----------------------------------------------------------------------------------------------
    def run(self, progress: Progress | None = None, log: Log | None = None) -> RunResult:
        """Run every stage (or resume an interrupted run of the same config) and write the run directory."""
        import tomli_w

        cfg = self.config
        log = log or (lambda message: None)
        out = self.out
        effective = tomli_w.dumps(redact_urls(cfg.to_dict()))  # no credentials of endpoint URLs on disk
        self._claim(out, effective)
        state = out / "state"
        state.mkdir(parents=True, exist_ok=True)

        samples = load_benchmark(cfg.benchmark.path, cfg.benchmark.format)
        if not samples:
            raise InputError("the benchmark has no samples", path=cfg.benchmark.path)
        kind = "mmlu" if samples[0].is_mcq else samples[0].benchmark
        reference = load_benchmark(cfg.benchmark.reference, cfg.benchmark.format) if cfg.benchmark.reference else None
        if cfg.benchmark.fewshot:
            load_benchmark(cfg.benchmark.fewshot)  # a bad few-shot file fails before any model work
        truth = None
        if cfg.benchmark.truth:
            from itd.probes.detection import load_truth

            truth = load_truth(cfg.benchmark.truth)
        log(f"{len(samples)} {kind} items from {cfg.benchmark.path}")

        self._check_endpoints(state)
        models = self._models(state)
        files: dict[str, Path] = {}
        detection = scan_report = None
        if cfg.probes and cfg.model.base_url:
            log("model-side detection skipped: an endpoint gives no token probabilities to probe")
        if cfg.probes and models.get("model") is not None:
            from itd.probes.detection import detect

            log(f"detecting with {cfg.model.name}")
            detection = detect(samples, models["model"], reference, cfg.detect,
                               reference_model=models.get("reference"), truth=truth,
                               progress=prefixed(progress, "detect"))
            detection.write_jsonl(out / "detection.jsonl")
            files["detection"] = out / "detection.jsonl"
        if cfg.scan.corpus and cfg.scan.detect:
            from itd.corpus.scan import scan

            log(f"scanning {len(cfg.scan.corpus)} corpus path(s)")
            scan_report = scan(samples, list(cfg.scan.corpus), self._scan_config(),
                               progress=lambda d, t: progress("scan", d, t) if progress else None)
            scan_report.write_jsonl(out / "scan.jsonl")
            files["scan"] = out / "scan.jsonl"
        flagged = {it.sample.id for it in detection.flagged} if detection else set()
        if scan_report is not None:
            flagged |= {r.sample.id for r in scan_report.contaminated}
        if detection is None and scan_report is None and cfg.rewrite.only_flagged:
            raise InputError("nothing to detect with: give model.name (with detect probes on) or scan.corpus, "
                             "or set rewrite.only_flagged = false to rewrite every item")
        if detection is not None and detection.verdict == "undecided" and scan_report is None and cfg.rewrite.only_flagged:
            # probe scores alone flag nothing; rewriting "the flagged items" would silently rewrite none
            raise InputError(f"model-side detection cannot decide: {detection.undecided_reason} (in the run's "
                             "config: benchmark.reference, detect.threshold or detect.methods); or give scan.corpus, "
                             "or set rewrite.only_flagged = false")
        log(f"{len(flagged)} item(s) flagged")

        rewrite_report = self._rewrite(samples, kind, flagged, models, reference, state, progress)
        rewrite_report.write_log(out / "rewrite.jsonl")
        files["rewrite"] = out / "rewrite.jsonl"
        decontaminated = rewrite_report.samples(drop_rejected=cfg.rewrite.drop_rejected)
        files["decontaminated"] = self._write_set(decontaminated)

        evaluation = comparison = truth_figures = None
        if cfg.evaluation:
            rewritten = {it.original.id for it in rewrite_report.items if it.status == "rewritten"}
            evaluation, comparison = self._evaluate(samples, decontaminated, flagged, rewritten, models, state, progress, log)
            sets = {"decontaminated": decontaminated}
            changed = {"decontaminated": rewritten}
            for arm in cfg.arms:
                if arm == "all" and not cfg.rewrite.only_flagged:
                    continue  # the configured set already rewrote every item
                arm_report = self._rewrite(samples, kind, flagged, models, reference, state, progress,
                                           only_flagged=False, seed=cfg.rewrite.seed + (arm == "retest"))
                arm_report.write_log(out / f"rewrite-{arm}.jsonl")
                files[f"rewrite-{arm}"] = out / f"rewrite-{arm}.jsonl"
                sets[arm] = arm_report.samples(drop_rejected=cfg.rewrite.drop_rejected)
                changed[arm] = {it.original.id for it in arm_report.items if it.status == "rewritten"}
                roles = ("clean",) if arm == "retest" else ("model", "clean")
                self._evaluate_set(evaluation, arm, sets[arm], roles, models, state, progress, log)
            if truth and evaluation and "clean" in evaluation:
                truth_figures = self._ground_truth(evaluation, truth, changed, flagged)

        items = _item_records(samples, detection, scan_report, truth, rewrite_report, flagged, evaluation)
        if truth_figures is not None:
            gains = {g["id"]: g["gain"] for g in truth_figures.per_item}
            for rec in items:
                if rec["id"] in gains:
                    rec["gain"] = gains[rec["id"]]
        exported = None
        if cfg.report.lm_eval and kind in ("gsm8k", "mmlu") and decontaminated:
            exported = self._export(decontaminated, kind, evaluation, models)
            files["lm_eval"] = out / "lm_eval"
        summary = _summary(cfg, samples, kind, detection, scan_report, rewrite_report, flagged, comparison, evaluation,
                           truth, truth_figures)
        if exported is not None:
            summary["lm_eval"] = exported.to_dict()
        with atomic_write(out / "items.jsonl") as f:
            for rec in items:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        write_json(out / "summary.json", summary)
        files.update(items=out / "items.jsonl", summary=out / "summary.json")
        if cfg.report.html:
            from itd.pipeline.html_report import write_html_report

            write_html_report(out / "report.html", summary, items, top=cfg.report.top)
            files["report"] = out / "report.html"
        inputs = [p for p in (cfg.benchmark.path, cfg.benchmark.reference, cfg.benchmark.fewshot, cfg.benchmark.truth) if p]
        if cfg.probes:
            inputs += cfg.detect.input_files()
        model_names = (cfg.model.name, cfg.model.clean, cfg.model.reference, cfg.rewrite.llm_model)
        manifest = build_manifest(command="run", config=cfg.to_dict(), inputs=[*inputs, *cfg.scan.corpus],
                                  models=[m for m in model_names if m])
        manifest["rewrite_stats"] = rewrite_report.stats
        manifest["seeds"] = {"detect": cfg.detect.seed, "rewrite": cfg.rewrite.seed, "evaluate": cfg.evaluate.seed}
        if evaluation:
            manifest["evaluation"] = _generation_settings(evaluation)
        if exported is not None:
            manifest["lm_eval"] = exported.to_dict()
        manifest["outputs"] = {k: str(v.relative_to(out)) for k, v in files.items()}
        write_json(out / "manifest.json", manifest)
        files["manifest"] = out / "manifest.json"
        return RunResult(out, summary, items, files)

    # ---- stages -----------------------------------------------------------------------------------------------
    def _export(self, decontaminated, kind, evaluation, models):
        """The decontaminated set as an lm-eval task that scores the evaluated model as this run did: the prompt
        style and generation budget of its evaluation (or, with none, those it would have had), its shots."""
        from itd.evaluation import fewshot_pool, generation_budget, resolve_prompt_style
        from itd.pipeline.export import export_lm_eval

        cfg = self.config
        result = (evaluation or {}).get("model", {}).get("decontaminated")
        if result is not None:
            style, budget = result.prompt_style, result.max_gen_toks
        else:
            lm = models.get("model")
            model = lm if lm is not None else None if cfg.model.base_url else (cfg.model.name or None)
            style = resolve_prompt_style(cfg.evaluate.prompt_style, model)
            budget = generation_budget(cfg.evaluate.max_new_tokens, getattr(lm, "context_length", None))
        task = cfg.report.task or f"{Path(cfg.benchmark.path).stem}_itd"
        return export_lm_eval(decontaminated, self.out / "lm_eval", task=task, kind=kind,
                              fewshot=fewshot_pool(cfg.evaluate) or None, num_fewshot=cfg.evaluate.num_fewshot,
                              prompt_style=style, max_gen_toks=budget)

    def _claim(self, out: Path, effective: str) -> None:
        """Make `out` this run's directory: new, empty, or holding a run of the same config (a resume)."""
        saved = out / "config.toml"
        if saved.exists():
            if saved.read_text(encoding="utf-8") != effective:
                raise InputError("the run directory holds a run of another config; use a new --out, or remove it",
                                 path=str(out))
            return
        if out.exists() and any(out.iterdir()):
            raise InputError("the run directory exists and is not an itd run; use a new --out", path=str(out))
        with atomic_write(saved) as f:
            f.write(effective)

    def _models(self, state: Path) -> dict[str, Any]:
        """The evaluated and clean models, loaded once, each with its journal of finished model calls, and the
        reference model of the reference-model probes (its ratios to the evaluated model are journalled with the
        evaluated model's, its own passes in its own journal)."""
        cfg = self.config.model
        if not cfg.name:
            return {}
        if cfg.base_url:
            return {"model": None, "clean": None}  # endpoints: evaluation backends only, made in _evaluate
        from itd.probes.models import load_model

        models = {}
        for role, name in (("model", cfg.name), ("clean", cfg.clean)):
            if name:
                lm = load_model(name, device=cfg.device, dtype=cfg.dtype)
                lm.store = Journal(state / f"scores-{role}.jsonl")
                models[role] = lm
        if cfg.reference:
            # its own passes (the negative control of the one-model probes) are journalled too
            models["reference"] = load_model(cfg.reference, device=cfg.device, dtype=cfg.dtype)
            models["reference"].store = Journal(state / "scores-reference.jsonl")
        return models

    def _scan_config(self):
        from itd.corpus.scan import ScanConfig

        s = self.config.scan
        return ScanConfig(detectors=s.detectors, text_field=s.text_field, layout=s.layout, workers=s.workers, engine=s.engine,
                          ray_address=s.ray_address, detector_options=s.detector_options)

    def _rewrite(self, samples, kind, flagged, models, reference, state, progress, *, only_flagged: bool | None = None,
                 seed: int | None = None):
        """The rewrite stage: the configured rewriter, verifier and assurance (the probes with the models of
        `models`), on the flagged items (or, with `only_flagged` false, on every item); `seed` replaces the
        rewriter's seed."""
        from itd.rewriters.assure import build_assurance
        from itd.rewriters.loop import build_rewriter, rewrite
        from itd.rewriters.verify import Verifier

        cfg = self.config
        only_flagged = cfg.rewrite.only_flagged if only_flagged is None else only_flagged
        seed = cfg.rewrite.seed if seed is None else seed
        method = cfg.rewrite.method
        if method == "auto":
            method = "permute" if kind == "mmlu" else "numeric"
        rewriter = build_rewriter(method, seed=seed, mmlu_cf=cfg.rewrite.mmlu_cf, math_prompt=cfg.rewrite.math_prompt,
                                  mcq_prompt=cfg.rewrite.mcq_prompt,
                                  llm=self._rewriter_llm(state, seed) if method == "llm" else None)
        wanted = set(cfg.rewrite.assurance) - {"none"}
        if "auto" in wanted:
            wanted.discard("auto")
            wanted.add("corpus" if cfg.scan.corpus else "model")
        lm = models.get("model")
        probe = "model" in wanted and lm is not None and (reference or cfg.detect.threshold is not None)
        assurance = build_assurance(model=lm if probe else None, reference=reference, detect=cfg.detect,
                                    reference_model=models.get("reference"),
                                    corpus=cfg.scan.corpus if "corpus" in wanted else (), scan=self._scan_config())

        def on_progress(stage: str, done: int, total: int, counters: dict) -> None:
            if progress is not None:
                progress(f"rewrite: {stage}", done, total)

        return rewrite(samples, rewriter, Verifier(cfg.verify), flagged=flagged if only_flagged else None,
                       rounds=cfg.rewrite.rounds, assurance=assurance, progress=on_progress)

    def _write_set(self, samples: list[Sample]) -> Path:
        target = self.out / "decontaminated"
        source = Path(self.config.benchmark.path)
        fmt = None if self.config.benchmark.format == "auto" else self.config.benchmark.format
        if source.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            write_benchmark(samples, target, format=fmt)
            return target
        if samples:
            write_benchmark(samples, target / source.name, format=fmt)
        return target / source.name

    def _evaluate(self, samples, decontaminated, flagged, rewritten, models, state, progress, log):
        from itd.evaluation import compare

        ecfg = self.config.evaluate
        results: dict[str, dict[str, Any]] = {}
        for role in ("model", "clean"):
            for which, items in (("original", samples), ("decontaminated", decontaminated)):
                self._evaluate_set(results, which, items, (role,), models, state, progress, log)
        if "model" not in results:
            return None, None
        comparison = compare(
            results["model"]["original"], results["model"]["decontaminated"], flagged,
            clean_original=results.get("clean", {}).get("original"),
            clean_decontaminated=results.get("clean", {}).get("decontaminated"),
            rewritten=rewritten, seed=ecfg.seed,
        )
        return results, comparison

    def _evaluate_set(self, results, which, items, roles, models, state, progress, log) -> None:
        """Evaluate the models of `roles` ("model", "clean") that the config names on `items` into
        `results[role][which]`."""
        from itd.evaluation import evaluate

        cfg = self.config
        for role in roles:
            name = cfg.model.name if role == "model" else cfg.model.clean
            if not name:
                continue
            backend = models.get(role) if not cfg.model.base_url else self._endpoint(name, state)
            log(f"evaluating {name} on the {which} set")
            results.setdefault(role, {})[which] = evaluate(items, backend, cfg.evaluate,
                                                           store=Journal(state / f"eval-{role}.jsonl"),
                                                           progress=under(progress, f"evaluate {role} ({which})"))

    def _ground_truth(self, evaluation, truth, changed, flagged):
        """The lab's ground truth (`itd.evaluation.ground_truth`) over the evaluated sets: "itd" is the
        configured decontaminated set when it rewrote the flagged items only, "all" the one with every item
        rewritten, "retest" every item rewritten again."""
        from itd.evaluation import TwinOutcome, ground_truth

        main = "itd" if self.config.rewrite.only_flagged else "all"
        rename = {"original": "original", "decontaminated": main}
        results = {role: {rename.get(which, which): r for which, r in sets.items()} for role, sets in evaluation.items()}
        rewritten = {rename.get(which, which): ids for which, ids in changed.items()}
        outcome = TwinOutcome(truth["leaked"], truth["unseen"], results, rewritten, flagged)
        return ground_truth([outcome], seed=self.config.evaluate.seed)

    def _rewriter_llm(self, state: Path, seed: int | None = None):
        """The LLM config of the `llm` rewriter (`seed`: the rewrite's seed, default the config's)."""
        from itd.llm import LLMConfig

        cfg = self.config.rewrite
        if not cfg.llm_model:
            raise InputError("the llm rewriter needs rewrite.llm_model (and rewrite.llm_base_url for a local endpoint)")
        return LLMConfig(model=cfg.llm_model, base_url=cfg.llm_base_url, temperature=cfg.temperature, seed=cfg.seed if seed is None else seed,
                         cache_dir=str(state / "llm-cache"))

    def _endpoint_llm(self, name: str, state: Path):
        """The LLM config of the evaluation endpoint serving model `name`."""
        from itd.llm import LLMConfig

        cfg = self.config.model
        return LLMConfig(model=name, base_url=cfg.base_url, api_key_env=cfg.api_key_env, concurrency=cfg.concurrency,
                         temperature=0.0, cache_dir=str(state / "llm-cache"), api=cfg.api)

    def _endpoint(self, name: str, state: Path):
        from itd.evaluation import BACKENDS

        return BACKENDS.create("openai", self._endpoint_llm(name, state))

    def _check_endpoints(self, state: Path) -> None:
        """Stop before any work when an endpoint the run needs does not answer (`itd.llm.check_endpoint`)."""
        cfg = self.config
        configs = []
        if cfg.evaluation and cfg.model.base_url:
            configs += [self._endpoint_llm(name, state) for name in (cfg.model.name, cfg.model.clean) if name]
        if cfg.rewrite.method == "llm":
            configs.append(self._rewriter_llm(state))
        if not configs:
            return
        from itd.llm import check_endpoint

        checked = set()
        for llm in configs:
            if (llm.base_url, llm.api_key_env) not in checked:
                checked.add((llm.base_url, llm.api_key_env))
                check_endpoint(llm, purpose="The run's LLM endpoint")


# ---- records ----------------------------------------------------------------------------------------------------
def _sample_view(s: Sample) -> dict[str, Any]:
    return {"question": s.question, "answer": s.answer, "choices": list(s.choices) if s.choices else None,
            "solution": s.solution}


def _item_records(samples, detection, scan_report, truth, rewrite_report, flagged, evaluation) -> list[dict[str, Any]]:
    det = {it.sample.id: it for it in detection.items} if detection else {}
    found = scan_report.by_id() if scan_report is not None else {}
    rewrites = {it.original.id: it for it in rewrite_report.items}
    leaked = set(truth["leaked"]) if truth else set()
    unseen = set(truth["unseen"]) if truth else set()
    evals = {}
    if evaluation:
        for role, sets in evaluation.items():
            for which, result in sets.items():
                for it in result.items:
                    evals.setdefault(it.id, {}).setdefault(role, {})[which] = it.to_dict()
    records = []
    for s in samples:
        rec: dict[str, Any] = {"id": s.id, "source": s.source.to_dict() if s.source else None,
                               "original": _sample_view(s), "flagged": s.id in flagged}
        if s.id in det:
            d = det[s.id].to_dict(detection.config.decision)
            rec["detection"] = {"scores": {m: d.get(m) for m in detection.config.methods}, "p_value": d.get("p_value"),
                                "q_value": d.get("q_value"), "flag": d.get("flag"), "n_tokens": d.get("n_tokens")}
        if s.id in found:
            r = found[s.id].to_dict()
            rec["scan"] = {"label": r["label"], "coverage": r.get("coverage"), "evidence": r.get("evidence", [])}
        rec["truth"] = "leaked" if s.id in leaked else "unseen" if s.id in unseen else None
        it = rewrites[s.id]
        rec["rewrite"] = {"status": it.status if it.status != "unchanged" else "not_flagged",
                          "method": rewrite_report.rewriter.get("method"),
                          "final": _sample_view(it.final) if it.status == "rewritten" else None,
                          "reasons": it.reasons, "attempts": [a.to_dict() for a in it.attempts]}
        rec["evaluation"] = evals.get(s.id)
        records.append(rec)
    return records


def _summary(cfg, samples, kind, detection, scan_report, rewrite_report, flagged, comparison, evaluation,
             truth, truth_figures=None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "benchmark": {"path": cfg.benchmark.path, "kind": kind, "items": len(samples)},
        "models": {"model": cfg.model.name or None, "clean": cfg.model.clean, "reference": cfg.model.reference},
        "flagged": len(flagged),
    }
    if detection is not None:
        d = detection.summary()
        d.pop("flagged_ids", None)
        d["methods"] = list(detection.config.methods)
        d["fdr"] = detection.config.fdr
        decision = detection.config.decision  # its deciding Mann-Whitney test: the controlled one where there is one
        d["set_test"] = d["controlled_set_tests"].get(decision) or d["set_tests"].get(decision)
        out["detection"] = d
    if scan_report is not None:
        out.setdefault("detection", {})["scan"] = {"counts": scan_report.counts()}
    out["rewrite"] = {k: v for k, v in rewrite_report.summary().items() if k != "stats"}  # stats: manifest
    if comparison is not None:
        out["evaluation"] = comparison.to_dict()
        out["evaluation"]["metric"] = evaluation["model"]["original"].metric
        out["evaluation"].update(_generation_settings(evaluation))
        out["evaluation"]["unparsed"] = {role: {which: r.unparsed for which, r in sets.items() if r.unparsed}
                                         for role, sets in evaluation.items()}
        if truth:
            out["evaluation"]["by_truth"] = _accuracy_by_truth(evaluation, truth, cfg.evaluate.seed)
        if scan_report is not None:
            out["evaluation"]["by_label"] = _accuracy_by_label(evaluation, scan_report, flagged, cfg.evaluate.seed)
        if truth_figures is not None:
            gt = truth_figures.to_dict()
            gt.pop("per_item")  # per item in items.jsonl ("gain")
            gt["main"] = "itd" if cfg.rewrite.only_flagged else "all"
            out["evaluation"]["ground_truth"] = gt
    out["headline"] = headline(out)
    return out


def _generation_settings(evaluation) -> dict[str, Any]:
    """Per evaluated model, the resolved prompt style and the generation budget it was evaluated with."""
    firsts = {role: next(iter(sets.values())) for role, sets in evaluation.items() if sets}
    return {"prompt_style": {role: r.prompt_style for role, r in firsts.items()},
            "max_gen_toks": {role: r.max_gen_toks for role, r in firsts.items()}}


def _accuracy_by_label(evaluation, scan_report, flagged, seed: int) -> dict[str, Any]:
    """The model's accuracy, before and after decontamination, on the items of each corpus-scan label and on
    the model-side flagged and unflagged items (one table: where the score comes from)."""
    from itd.corpus.report import LABELS
    from itd.evaluation import accuracy_by_group

    groups: dict[str, list[str]] = {label: [] for label in LABELS}
    for r in scan_report.results:
        groups[r.label].append(r.sample.id)
    ids = [r.sample.id for r in scan_report.results]
    flagged = set(flagged)
    groups["flagged"] = [i for i in ids if i in flagged]
    groups["unflagged"] = [i for i in ids if i not in flagged]
    sets = evaluation["model"]
    return accuracy_by_group(sets["original"], sets.get("decontaminated"), groups, seed=seed)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def headline(summary: Mapping[str, Any]) -> str:
    """The one sentence that says what a run found, for the terminal and the top of the report: accuracy before
    and after decontamination (beside the clean model's), what was flagged, and the share of the inflation
    removed with its CI. With a lab's ground truth the figures are the twins' and the leak's."""
    det = summary.get("detection") or {}
    ev = summary.get("evaluation") or {}
    gt = ev.get("ground_truth")
    fdr = f" (FDR {100 * det['fdr']:g}%)" if det.get("mode") == "fdr" and det.get("fdr") is not None else ""
    n_items = (summary.get("benchmark") or {}).get("items")
    flagged = summary.get("flagged", 0)
    if not ev:
        return f"{flagged} of {n_items} items were flagged{fdr}; the run evaluated no model."
    acc = ev.get("accuracy") or {}
    value = lambda fig: (fig or {}).get("value")  # noqa: E731
    if gt:
        before, after = gt["arms"]["none"], gt["arms"][gt["main"]]
        flags = gt.get("flags")
        if flags:
            flag_part = f"{flags['leaked_flagged']} of its {flags['leaked']} leaked items were flagged{fdr}"
            if flags.get("unseen_flagged"):
                flag_part += f" (and {flags['unseen_flagged']} of its {flags['unseen']} unseen ones)"
        else:
            flag_part = f"{flagged} items were flagged{fdr}"
        true = gt["true_inflation"]
        true_part = ""
        if value(true) is not None and (true.get("ci") or [None])[0] is not None:
            lo, hi = true["ci"]
            true_part = (f", {100 * value(true):.0f} points [{100 * lo:.0f}, {100 * hi:.0f}] better on its leaked "
                         "items than on unseen ones, beyond the clean twin's difference")
        removed = after["inflation_removed"]
        lo, hi = removed.get("ci") or (None, None)
        removed_part = (f"{_pct(value(removed))} of the inflation removed [{_pct(lo)}, {_pct(hi)}]"
                        if value(removed) is not None else f"no share removed ({removed.get('reason')})")
        return (f"The contaminated model scores {_pct(value(before['accuracy_model']))} (clean twin "
                f"{_pct(value(before['accuracy_clean']))}){true_part}; {flag_part}; on the decontaminated set it "
                f"scores {_pct(value(after['accuracy_model']))} (clean twin {_pct(value(after['accuracy_clean']))}): "
                f"{removed_part}.")
    model, clean = acc.get("model") or {}, acc.get("clean")
    first = f"The model scores {_pct(value(model.get('original')))}"
    after = f"on the decontaminated set it scores {_pct(value(model.get('decontaminated')))}"
    if clean:
        first += f" (clean model {_pct(value(clean.get('original')))})"
        after += f" (clean model {_pct(value(clean.get('decontaminated')))})"
        removed = ev.get("inflation_removed") or {}
        lo, hi = removed.get("ci") or (None, None)
        after += (f": {_pct(value(removed))} of the inflation removed [{_pct(lo)}, {_pct(hi)}]"
                  if value(removed) is not None else f": no share removed ({removed.get('reason')})")
    return f"{first}; {flagged} of {n_items} items were flagged{fdr}; {after}."


def _accuracy_by_truth(evaluation, truth, seed: int) -> dict[str, Any]:
    """Accuracy of every model on every set, on the items the truth says leaked and on the unseen ones, each with
    its percentile-bootstrap 95% CI (`itd.evaluation.Estimate` dicts; `accuracy` repeats `value`): where the
    memory is, and whether rewriting took it away."""
    from itd.evaluation import accuracy_by_group

    groups = {group: list(truth[group]) for group in ("leaked", "unseen")}
    out: dict[str, Any] = {}
    for role, sets in evaluation.items():
        for which, result in sets.items():
            figures = accuracy_by_group(result, None, groups, seed=seed)  # ids a set lacks are not counted
            out.setdefault(role, {})[which] = {g: {**fig["before"], "accuracy": fig["before"]["value"]}
                                               for g, fig in figures.items()}
    return out
