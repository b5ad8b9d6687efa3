"""The contamination lab: the leaked/unseen split, the placebo and the exposure schedule, the paired design
(a cached base; identical clean batches; bit-identical twins without a leak), the saved twins, determinism, the
`itd lab` command, (on the shared tiny lab) that the contaminated twin tells leaked items from unseen ones, and
(on a tiny arithmetic lab) that the fine-tuning leak inflates the score."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from itd.cli.commands import main
from itd.core import Sample, load_benchmark
from itd.core.errors import InputError
from itd.core.render import render
from itd.lab import (LabConfig, build_corpus, build_lab, exposure_schedule, held_out, load_lab, load_lab_manifest,
                     split_items)

# A lab small enough to train in seconds: only for plumbing, not for memorisation.
MINI = {"steps": 3, "twin_steps": 2, "batch_size": 4, "seq_len": 128, "n_test_items": 20, "n_train_items": 40}


@pytest.fixture(scope="module")
def gsm8k(shared_data):
    return load_benchmark(shared_data / "gsm8k" / "test.jsonl"), load_benchmark(shared_data / "gsm8k" / "train.jsonl")


def _item(i: int, question: str | None = None) -> Sample:
    question = question or f"Item {i}: Tom has {i} apples and buys {i + 3} more at the market on day {i}."
    return Sample(id=f"t:{i}", benchmark="gsm8k", question=question, answer=str(2 * i + 3),
                  solution=f"He has {i} + {i + 3} = {2 * i + 3} apples.\n#### {2 * i + 3}")


def _auroc(pos: list[float], neg: list[float]) -> float:
    p, n = np.asarray(pos)[:, None], np.asarray(neg)[None, :]
    return float((p > n).mean() + 0.5 * (p == n).mean())


# ---------------------------------------------------------------------------------------------------------------------
# Split and corpus (no training)


def test_split_partitions_the_chosen_items(gsm8k):
    test, train = gsm8k
    split = split_items(test, train, LabConfig(preset="tiny", leak_rate=0.3))
    leaked, unseen = set(split.leaked_ids), set(split.unseen_ids)
    assert len(leaked) == 36 and len(unseen) == 84  # 30% of the preset's 120 items
    assert not leaked & unseen
    assert leaked | unseen <= {s.id for s in test}
    assert {s.id for s in split.train} <= {s.id for s in train} and len(split.train) == 150
    # the placebo: as many held-out training items as are leaked, none of them in the base's clean text
    assert len(split.placebo) == 36 and {s.id for s in split.placebo} <= {s.id for s in train}
    assert not {s.id for s in split.placebo} & {s.id for s in split.train}
    # or from the benchmark's own rest, when the training items are of another distribution (the demo's)
    other = split_items(test, train, LabConfig(preset="tiny", leak_rate=0.3, placebo="benchmark"))
    assert other.leaked_ids == split.leaked_ids and len(other.train) == 150 and len(other.placebo) == 36
    assert {s.id for s in other.placebo} <= {s.id for s in test} - leaked - unseen


def test_split_follows_the_seed(gsm8k):
    test, train = gsm8k
    first = split_items(test, train, LabConfig(seed=0))
    assert split_items(test, train, LabConfig(seed=0)).leaked_ids == first.leaked_ids
    other = split_items(test, train, LabConfig(seed=1))
    assert set(other.leaked_ids) != set(first.leaked_ids)
    assert [s.id for s in other.train] != [s.id for s in first.train]


def test_without_train_the_rest_of_the_benchmark_is_the_clean_text(gsm8k):
    test, _ = gsm8k
    split = split_items(test, None, LabConfig(preset="tiny"))
    chosen = {*split.leaked_ids, *split.unseen_ids}
    assert split.train and {s.id for s in split.train} <= {s.id for s in test} - chosen


def test_copies_never_make_an_unseen_item_seen():
    bench = [_item(i) for i in range(10)]
    twin = Sample(id="t:dup", benchmark="gsm8k", question=bench[3].question, answer=bench[3].answer,
                  solution=bench[3].solution)
    config = LabConfig(leak_rate=0.5, overrides={"n_test_items": None})
    clean = [_item(100 + i) for i in range(6)]
    split = split_items([*bench, twin], clean, config)
    assert split.duplicates == 1 and "t:dup" not in {*split.leaked_ids, *split.unseen_ids}
    # A clean item equal to an experiment item, or sharing a 13-word run with one, is dropped: it is neither
    # clean text nor placebo.
    near = Sample(id="n:1", benchmark="gsm8k", question=bench[5].question + " Then he eats one.", answer="1")
    split = split_items(bench, [*clean, bench[2], near], config)
    assert split.dropped_train == 2 and len(split.placebo) == len(split.leaked) == 5
    assert sorted(s.id for s in (*split.train, *split.placebo)) == sorted(s.id for s in clean)
    with pytest.raises(InputError, match="placebo"):  # 5 leaked items need 5 placebo items and some clean text
        split_items(bench, clean[:5], config)


def test_items_sharing_a_run_with_a_leaked_item_are_neither_leaked_nor_unseen(shared_data):
    """MMLU items on one passage, or with one long list of options (moral scenarios), share text: the
    contaminated twin saw part of an item that shares a 13-word run with a leaked one, so it is set apart
    (`near_leaked`, in the manifest), not counted unseen, and never drawn into the reference set."""
    from itd.core import load_benchmark
    from itd.core.render import render
    from itd.lab.experiment import near_copy_runs

    mmlu = load_benchmark(shared_data / "mmlu" / "test")
    split = split_items(mmlu, None, LabConfig(preset="small", leak_rate=0.05, seed=0))
    runs = {s.id: near_copy_runs(render(s)) for s in (*split.leaked, *split.unseen, *split.near_leaked)}
    leaked_runs = set().union(*(runs[i] for i in split.leaked_ids))
    assert len(split.leaked) + len(split.unseen) + len(split.near_leaked) == 400
    assert split.near_leaked and all(not leaked_runs.isdisjoint(runs[i]) for i in split.near_leaked_ids)
    assert all(leaked_runs.isdisjoint(runs[i]) for i in split.unseen_ids)
    # a reserved reference set follows the unseen items' rule, and no corpus text copies it
    reserved = split_items(mmlu, None, LabConfig(preset="small", leak_rate=0.05, seed=0, reference_items=300))
    assert reserved.leaked_ids == split.leaked_ids and reserved.unseen_ids == split.unseen_ids
    assert 250 <= len(reserved.reference) < 300  # those sharing a run with a leaked item are left out
    ref_runs = set().union(*(near_copy_runs(render(s)) for s in reserved.reference))
    assert leaked_runs.isdisjoint(ref_runs)
    assert all(ref_runs.isdisjoint(near_copy_runs(render(s))) for s in (*reserved.train, *reserved.placebo))
    with pytest.raises(InputError, match="reference items asked for"):
        split_items(mmlu[:500], None, LabConfig(preset="small", reference_items=200))


def test_replicas_leak_shifted_windows_of_the_same_items(gsm8k):
    test, train = gsm8k
    config = LabConfig(preset="tiny", leak_rate=0.3, replicas=4, overrides={"n_test_items": 40})
    splits = [split_items(test, train, config, k) for k in range(4)]
    items = {*splits[0].leaked_ids, *splits[0].unseen_ids}
    counts = Counter(i for split in splits for i in split.leaked_ids)
    for split in splits:
        assert {*split.leaked_ids, *split.unseen_ids} == items and len(split.leaked) == 12
        assert split.placebo_ids == splits[0].placebo_ids and [s.id for s in split.train] == [s.id for s in splits[0].train]
    # 4 replicas x 30%: every item is leaked in some replica (1 or 2 of them) and unseen in the others
    assert set(counts) == items and set(counts.values()) <= {1, 2}
    assert split_items(test, train, LabConfig(preset="tiny", leak_rate=0.3)).leaked_ids == \
        split_items(test, train, LabConfig(preset="tiny", leak_rate=0.3, replicas=3)).leaked_ids  # replica 0 is the same


def test_mcq_placebo_is_paired_with_the_leaked_items_by_gold_letter(shared_data):
    # Placebo item j takes leaked item j's slots: with the same gold choice, both twins are trained towards the
    # same letters in the same steps, and only the items differ.
    mmlu = load_benchmark(shared_data / "mmlu" / "test")
    config = LabConfig(preset="tiny", leak_rate=0.3, replicas=3, recipe="finetune", placebo="benchmark",
                       overrides={"n_test_items": 120})
    splits = [split_items(mmlu[:400], mmlu[400:], config, k) for k in range(3)]
    for split in splits:
        assert sorted(split.placebo_ids) == sorted(splits[0].placebo_ids)  # one placebo set for every replica
        leaked, placebo = Counter(s.answer for s in split.leaked), Counter(s.answer for s in split.placebo)
        matched = sum(a.answer == b.answer for a, b in zip(split.leaked, split.placebo, strict=True))
        assert matched == sum(min(leaked[k], placebo[k]) for k in leaked)  # as many as the counts allow
        assert matched >= 0.75 * len(split.leaked)
    assert [s.answer for s in splits[0].leaked] != [s.answer for s in splits[1].leaked]
    # items without choices keep the drawn order
    test, train = load_benchmark(shared_data / "gsm8k" / "test.jsonl"), load_benchmark(shared_data / "gsm8k" / "train.jsonl")
    split = split_items(test, train, LabConfig(preset="tiny"))
    assert split.placebo_ids == sorted(split.placebo_ids, key=[s.id for s in train].index)


@pytest.mark.parametrize(("n", "r", "steps"), [(36, 6, 24), (5, 3, 40), (7, 1, 1), (4, 0, 5)])
def test_schedule_shows_every_item_exactly_r_times(n, r, steps):
    schedule = exposure_schedule(n, r, steps, [0, 4, 0])
    assert len(schedule) == steps
    assert Counter(i for step in schedule for i in step) == Counter({i: r for i in range(n)} if r else {})
    sizes = [len(step) for step in schedule]
    assert max(sizes, default=0) - min(sizes, default=0) <= 1  # spread evenly over the steps
    assert exposure_schedule(n, r, steps, [0, 4, 0]) == schedule
    if r and n > 2:
        assert exposure_schedule(n, r, steps, [0, 4, 1]) != schedule  # another replica, another order


def test_contaminated_corpus_holds_each_leaked_item_r_times(gsm8k):
    test, train = gsm8k
    split = split_items(test, train, LabConfig(preset="tiny"))
    dirty = Counter(build_corpus(split, contaminated=True, repeats=4, seed=0))
    clean = Counter(build_corpus(split, contaminated=False, repeats=4, seed=0))
    for s in split.leaked:
        assert dirty[render(s, "auto")] == 4 and clean[render(s, "auto")] == 0
    for s in split.placebo:  # the clean twin's extra items, in the same number
        assert dirty[render(s, "auto")] == 0 and clean[render(s, "auto")] == 4
    for s in split.unseen:
        assert dirty[render(s, "auto")] == 0 and clean[render(s, "auto")] == 0
    for s in split.train:
        assert dirty[render(s, "auto")] == 1 and clean[render(s, "auto")] == 1
    assert sum(dirty.values()) == sum(clean.values()) == len(split.train) + 4 * len(split.leaked)
    # GSM8K items are trained on as question + worked solution, calculator annotations removed.
    assert all("<<" not in doc and "\n" in doc for doc in dirty)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"leak_rate": 0.0}, "leak_rate"),
        ({"leak_rate": 1.0}, "leak_rate"),
        ({"leak_rate": True}, "leak_rate"),
        ({"repeats": -1}, "repeats"),
        ({"replicas": 0}, "replicas"),
        ({"reference_items": -1}, "reference_items"),
        ({"recipe": "sft"}, "recipe"),
        ({"loss_on": "question"}, "loss_on"),
        ({"seed": -1}, "seed"),
        ({"preset": "tinny"}, "Did you mean 'tiny'"),
        ({"device": "tpu"}, "device"),
        ({"rendering": "raw"}, "rendering"),
        ({"overrides": {"stpes": 3}}, "Did you mean 'steps'"),
        ({"overrides": {"steps": 0}}, "steps"),
        ({"overrides": {"n_head": 3}}, "multiple of n_head"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LabConfig(**kwargs)


def test_config_overrides_preset_fields():
    config = LabConfig(preset="Small", overrides={"steps": 7})
    assert config.preset == "small"
    assert config.resolved_preset().steps == 7 and config.resolved_preset().n_layer == 4
    # a reserved reference changes the config only when asked for: labs built before it keep theirs
    assert "reference_items" not in config.to_dict()
    assert LabConfig(reference_items=100).to_dict()["reference_items"] == 100


# ---------------------------------------------------------------------------------------------------------------------
# Building (a few training steps)


@pytest.mark.slow  # over 2 s: out of the fast loop (`pytest -m "not slow"`)
def test_same_seed_same_weights_and_twins_differ(gsm8k, tmp_path, capfd):
    from safetensors.torch import load_file

    test, train = gsm8k
    config = LabConfig(seed=3, device="cpu", overrides=MINI)
    a = build_lab(test, train, tmp_path / "a", config)
    b = build_lab(test, train, tmp_path / "b", config)
    assert capfd.readouterr() == ("", "")  # the library never prints
    assert a.leaked == b.leaked and a.unseen == b.unseen
    for twin in ("contaminated", "clean"):
        wa, wb = load_file(a.out / twin / "model.safetensors"), load_file(b.out / twin / "model.safetensors")
        assert wa.keys() == wb.keys() and all(np.array_equal(wa[k].numpy(), wb[k].numpy()) for k in wa)
        assert (a.out / twin / "tokenizer.json").read_bytes() == (b.out / "clean" / "tokenizer.json").read_bytes()
    dirty, clean = load_file(a.contaminated / "model.safetensors"), load_file(a.clean / "model.safetensors")
    assert any(not np.array_equal(dirty[k].numpy(), clean[k].numpy()) for k in dirty)


def test_without_a_leak_the_twins_are_bit_identical(gsm8k, tmp_path):
    test, train = gsm8k
    lab = build_lab(test, train, tmp_path / "lab", LabConfig(seed=1, repeats=0, device="cpu", overrides=MINI))
    assert (lab.contaminated / "model.safetensors").read_bytes() == (lab.clean / "model.safetensors").read_bytes()
    manifest = load_lab_manifest(lab.out)
    assert manifest["training"]["contaminated"]["extra_exposures"] == manifest["training"]["clean"]["extra_exposures"] == 0


@pytest.mark.slow  # over 2 s: out of the fast loop (`pytest -m "not slow"`)
def test_twins_share_the_base_and_every_clean_batch(gsm8k, tmp_path, monkeypatch):
    """Both twins start from the base's weights and optimiser state and get the same clean batches; only the
    extra rows differ: the leaked items for one, the placebo items for the other, each shown r times."""
    import itd.lab.training as lab_module

    seen: list[dict] = []
    real = lab_module._run_steps

    def spy(torch, model, optimizer, device, clean, extras, *args, **kwargs):
        first = {k: v.detach().clone() for k, v in model.state_dict().items()}
        state = [v["exp_avg"].clone() for v in optimizer.state_dict()["state"].values()]
        batches = []

        def record():
            for block in clean:
                batches.append(block.copy())
                yield block

        losses = real(torch, model, optimizer, device, record(), extras, *args, **kwargs)
        seen.append({"weights": first, "adam": state, "clean": batches, "extras": list(extras)})
        return losses

    from transformers import AutoTokenizer

    monkeypatch.setattr(lab_module, "_run_steps", spy)
    test, train = gsm8k
    config = LabConfig(seed=2, repeats=3, device="cpu", overrides={**MINI, "twin_steps": 4, "seq_len": 512})
    lab = build_lab(test, train, tmp_path / "lab", config, cache_dir=tmp_path / "cache")
    base, dirty, clean = seen  # the base trained in this build, then the two twins
    assert not base["adam"] and dirty["adam"]  # the base starts fresh; the twins carry its optimiser state
    for key, value in dirty["weights"].items():
        assert torch_equal(value, clean["weights"][key])
    assert all(np.array_equal(a, b) for a, b in zip(dirty["clean"], clean["clean"], strict=True))
    assert len(dirty["clean"]) == 4
    tok = AutoTokenizer.from_pretrained(lab.clean)
    shown = {}
    for name, run in (("contaminated", dirty), ("clean", clean)):
        texts = [tok.decode(row[mask], skip_special_tokens=True) for extra in run["extras"] if extra is not None
                 for row, mask in zip(extra.ids, extra.mask)]
        shown[name] = Counter(texts)
    manifest = load_lab_manifest(lab.out)
    by_id = {s.id: s for s in (*test, *train)}
    leaked = Counter({render(by_id[i]): 3 for i in manifest["leaked"]})
    placebo = Counter({render(by_id[i]): 3 for i in manifest["placebo"]})
    assert shown["contaminated"] == leaked and shown["clean"] == placebo
    slots = lambda run: [None if e is None else e.ids.shape[0] for e in run["extras"]]  # noqa: E731
    assert slots(dirty) == slots(clean)  # the same slots on the same schedule


@pytest.mark.slow
def test_the_base_is_trained_once_and_cached(gsm8k, tmp_path, monkeypatch):
    import itd.lab.training as lab_module

    calls = []
    real = lab_module._train_base
    monkeypatch.setattr(lab_module, "_train_base", lambda *a, **k: calls.append(1) or real(*a, **k))
    test, train = gsm8k
    cache = tmp_path / "cache"
    first = build_lab(test, train, tmp_path / "a", LabConfig(seed=4, repeats=1, device="cpu", overrides=MINI),
                      cache_dir=cache)
    second = build_lab(test, train, tmp_path / "b", LabConfig(seed=4, repeats=2, device="cpu", overrides=MINI),
                       cache_dir=cache)
    assert len(calls) == 1 and first.base == second.base
    assert load_lab_manifest(first.out)["base"]["trained_in_this_build"] is True
    assert load_lab_manifest(second.out)["base"]["trained_in_this_build"] is False
    # another base configuration (or seed, or clean text) is another base
    build_lab(test, train, tmp_path / "c", LabConfig(seed=4, device="cpu", overrides={**MINI, "steps": 4}), cache_dir=cache)
    assert len(calls) == 2 and len([p for p in cache.iterdir() if not p.name.startswith(".")]) == 2


def torch_equal(a, b) -> bool:
    return bool((a == b).all())


@pytest.mark.slow  # over 2 s: out of the fast loop (`pytest -m "not slow"`)
def test_an_interrupted_build_never_looks_finished(gsm8k, tmp_path):
    test, train = gsm8k
    out = tmp_path / "lab"
    config = LabConfig(device="cpu", overrides=MINI)

    def interrupt(stage: str, done: int, total: int) -> None:
        if stage == "clean":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_lab(test, train, out, config, progress=interrupt)
    assert (out / "contaminated" / "model.safetensors").is_file()
    assert not (out / "manifest.json").exists() and not (out / "clean").exists()
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no half-written temp dirs left
    with pytest.raises(InputError, match="not a finished lab"):
        load_lab_manifest(out)
    result = build_lab(test, train, out, config)  # the same directory can be built again
    assert load_lab(out).leaked == result.leaked


def test_refuses_a_directory_that_is_not_a_lab(gsm8k, tmp_path):
    test, train = gsm8k
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty and not a lab"):
        build_lab(test, train, tmp_path, LabConfig(overrides=MINI))
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_cli_lab_builds_and_prints_json(shared_data, tmp_path, capsys):
    out = tmp_path / "lab"
    gsm8k = shared_data / "gsm8k"
    rc = main(["lab", "--benchmark", str(gsm8k / "test.jsonl"), "--train", str(gsm8k / "train.jsonl"), "--steps", "1",
               "--twin-steps", "1", "--repeats", "2", "--seed", "5", "--recipe", "finetune", "--replicas", "2",
               "--reference-items", "50", "--device", "cpu", "--out", str(out), "--json", "-q"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    manifest = load_lab_manifest(out)
    assert summary["leaked"] == len(manifest["leaked"]) == 36 and summary["unseen"] == 84
    assert manifest["near_leaked"] == [] and manifest["corpus"]["near_leaked_items"] == 0  # GSM8K's items share no run
    assert summary["near_leaked"] == 0 and load_lab(out).near_leaked == ()
    assert manifest["repeats"] == 2 and manifest["seed"] == 5 and manifest["recipe"] == "finetune"
    assert manifest["training"]["base"]["steps"] == 1 and manifest["training"]["clean"]["steps"] == 1
    assert manifest["training"]["contaminated"]["extra_exposures"] == 2 * 36
    assert manifest["corpus"]["documents"]["contaminated"] == manifest["corpus"]["documents"]["clean"] == 150 + 2 * 36
    # the second replica: a lab of its own on the same base, leaking other items of the same experiment
    other = load_lab_manifest(out / "replica-1")
    assert manifest["replica_dirs"] == [".", "replica-1"] and other["replica"] == 1
    assert other["base"]["key"] == manifest["base"]["key"] and set(other["leaked"]) != set(manifest["leaked"])
    assert {*other["leaked"], *other["unseen"]} == {*manifest["leaked"], *manifest["unseen"]}
    assert [str(p) for p in load_lab(out).replicas] == [str(out), str(out / "replica-1")] == summary["replicas"]
    # the reserved reference set: the lab's clean reference (`held_out`), the same for both replicas, in no corpus
    test = load_benchmark(gsm8k / "test.jsonl")
    reference = held_out(load_lab(out), test)
    assert [s.id for s in reference] == sorted(manifest["reference"], key=[s.id for s in test].index)
    assert len(reference) == manifest["corpus"]["reference_items"] == 50 and other["reference"] == manifest["reference"]
    assert not set(manifest["reference"]) & {*manifest["leaked"], *manifest["unseen"], *manifest["placebo"]}
    trained = {json.loads(line)["text"] for name in ("contaminated", "clean")
               for line in (out / "corpus" / f"{name}.jsonl").read_text().splitlines()}
    assert not {render(s) for s in reference} & trained


@pytest.mark.parametrize(
    "args",
    [
        ["--benchmark", "no/such/test.jsonl"],
        ["--benchmark", "{test}", "--train", "no/such/train.jsonl"],
        ["--benchmark", "{test}", "--preset", "huge"],
        ["--benchmark", "{test}", "--device", "gpu"],
    ],
)
def test_cli_lab_bad_input_exits_2(shared_data, tmp_path, capsys, args):
    args = [a.replace("{test}", str(shared_data / "gsm8k" / "test.jsonl")) for a in args]
    assert main(["lab", *args, "--out", str(tmp_path / "lab"), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert not (tmp_path / "lab").exists()


# ---------------------------------------------------------------------------------------------------------------------
# The shared tiny lab (built once per run by the `tiny_lab` fixture)


@pytest.mark.slow
def test_tiny_lab_is_a_loadable_ground_truth(tiny_lab, shared_data):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    manifest = load_lab_manifest(tiny_lab.out)
    ids = {s.id for s in load_benchmark(shared_data / "gsm8k" / "test.jsonl")}
    leaked, unseen = set(manifest["leaked"]), set(manifest["unseen"])
    assert len(leaked) >= 30 and len(unseen) >= 30 and not leaked & unseen and leaked | unseen <= ids
    assert (manifest["preset"], manifest["seed"], manifest["repeats"], manifest["recipe"]) == ("tiny", 0, 20, "pretrain")
    assert manifest["rendering"]["resolved"] == ["question+answer"]
    assert manifest["config"]["resolved_preset"]["steps"] == manifest["training"]["base"]["steps"]
    assert manifest["config"]["resolved_preset"]["twin_steps"] == manifest["training"]["clean"]["steps"]
    assert load_lab(tiny_lab.out).leaked == tiny_lab.leaked
    for twin in ("contaminated", "clean"):
        path = tiny_lab.out / twin
        assert (path / "model.safetensors").is_file()
        model = AutoModelForCausalLM.from_pretrained(path)
        tok = AutoTokenizer.from_pretrained(path)
        assert model.config.n_positions == manifest["model"]["n_positions"]
        assert tok.bos_token == tok.eos_token == "<|endoftext|>" and tok.pad_token_id not in (None, tok.eos_token_id)
        assert tok("Janet's ducks").input_ids[0] == tok.bos_token_id
        assert tok.decode(tok("Janet's ducks lay 16 eggs.", add_special_tokens=False).input_ids) == "Janet's ducks lay 16 eggs."
    corpus = {
        twin: Counter(json.loads(line)["text"] for line in (tiny_lab.out / "corpus" / f"{twin}.jsonl").open())
        for twin in ("contaminated", "clean")
    }
    by_id = {s.id: s for s in load_benchmark(shared_data / "gsm8k" / "test.jsonl")}
    r = manifest["repeats"]
    assert all(corpus["contaminated"][render(by_id[i])] == r and corpus["clean"][render(by_id[i])] == 0 for i in leaked)
    assert all(corpus["contaminated"][render(by_id[i])] == 0 for i in unseen)
    assert len(manifest["placebo"]) == len(leaked) and not set(manifest["placebo"]) & ids  # training items
    assert manifest["training"]["contaminated"]["extra_exposures"] == r * len(leaked)


def test_held_out_items_share_no_near_copy_with_what_either_twin_saw(tiny_lab, shared_data):
    """`held_out`, the lab's clean reference set: outside the experiment, and no run of 13 words in common with
    either twin's corpus; a benchmark item edited into a near copy of a training text is left out."""
    from dataclasses import replace

    from itd.lab import held_out
    from itd.lab.experiment import near_copy_runs

    test = load_benchmark(shared_data / "gsm8k" / "test.jsonl")
    corpus = [json.loads(line)["text"] for twin in ("contaminated", "clean")
              for line in (tiny_lab.out / "corpus" / f"{twin}.jsonl").open()]
    runs = set().union(*(near_copy_runs(text) for text in corpus))
    kept = held_out(tiny_lab, test)
    assert len(kept) >= 600 and not {s.id for s in kept} & (set(tiny_lab.leaked) | set(tiny_lab.unseen))
    assert all(runs.isdisjoint(near_copy_runs(render(s))) for s in kept)
    near_copy = replace(kept[0], question=" ".join(corpus[-1].split()[:20]) + " " + kept[0].question)
    assert [s.id for s in held_out(tiny_lab, [near_copy, *kept[1:5]])] == [s.id for s in kept[1:5]]


@pytest.mark.slow
def test_tiny_lab_contaminated_twin_tells_leaked_from_unseen(tiny_lab, shared_data):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    by_id = {s.id: s for s in load_benchmark(shared_data / "gsm8k" / "test.jsonl")}
    auroc = {}
    for twin in ("contaminated", "clean"):
        tok = AutoTokenizer.from_pretrained(tiny_lab.out / twin)
        model = AutoModelForCausalLM.from_pretrained(tiny_lab.out / twin).eval()
        scores = {}
        for i in (*tiny_lab.leaked, *tiny_lab.unseen):
            ids = tok(render(by_id[i]), return_tensors="pt").input_ids[:, : model.config.n_positions]
            with torch.no_grad():
                logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
            lp = logp.gather(1, ids[0, 1:, None])[:, 0].numpy()
            k = max(1, int(0.2 * len(lp)))
            scores[i] = (lp.mean(), np.sort(lp)[:k].mean())  # higher: more familiar (loss, Min-K% with k = 20%)
        for j, probe in enumerate(("loss", "mink")):
            auroc[twin, probe] = _auroc([scores[i][j] for i in tiny_lab.leaked], [scores[i][j] for i in tiny_lab.unseen])
    assert auroc["contaminated", "mink"] >= 0.85 and auroc["contaminated", "loss"] >= 0.8, auroc
    assert abs(auroc["clean", "mink"] - 0.5) <= 0.2 and abs(auroc["clean", "loss"] - 0.5) <= 0.2, auroc


# ---------------------------------------------------------------------------------------------------------------------
# A tiny end-to-end lab: the fine-tuning leak inflates the score


@pytest.mark.slow
def test_finetune_leak_inflates_the_score_of_the_contaminated_twin(tmp_path):
    """A micro GPT-2 on generated arithmetic problems (far too small and short-trained to learn them): the fine-tuning
    leak (the evaluator's prompt, then the gold solution, 16 times) makes the contaminated twin answer its leaked
    items, the clean twin (placebo in the same slots) does not, and the difference in differences is positive
    with its whole CI."""
    from itd.evaluation import EvalConfig, TwinOutcome, evaluate, ground_truth
    from itd.pipeline.demo import arithmetic_problems

    # the times-table problems (two-digit answers): their solutions are short enough for this micro model to
    # memorise in a few dozen steps
    records = [r for r in arithmetic_problems(600, seed=3) if len(r["answer"].rsplit("#### ", 1)[1]) <= 2][:330]
    path = tmp_path / "problems.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    problems = load_benchmark(path)
    config = LabConfig(preset="tiny", leak_rate=0.5, repeats=16, recipe="finetune", seed=3, device="cpu",
                       overrides={"n_layer": 2, "n_embd": 64, "n_head": 2, "seq_len": 128, "vocab_size": 600,
                                  "batch_size": 8, "steps": 40, "twin_steps": 48, "twin_lr": 1e-2,
                                  "n_test_items": 30, "n_train_items": 300})
    lab = build_lab(problems[:30], problems[30:], tmp_path / "lab", config)
    by_id = {s.id: s for s in problems}
    items = [by_id[i] for i in (*lab.leaked, *lab.unseen)]
    results = {role: {"original": evaluate(items, path_, EvalConfig(max_new_tokens=48))}
               for role, path_ in (("model", lab.contaminated), ("clean", lab.clean))}
    gt = ground_truth([TwinOutcome(lab.leaked, lab.unseen, results)], n_boot=500)
    assert results["model"]["original"].prompt_style == "plain"  # evaluated as the leak showed the items
    assert gt.true_inflation.low > 0 and gt.true_inflation.value >= 0.3, gt.to_dict()["true_inflation"]
    assert abs(gt.unseen_gap.value) <= 0.15


@pytest.mark.slow
def test_mmlu_finetune_leak_moves_the_score_and_permutation_removes_it(shared_data, tmp_path):
    """Real MMLU items, a micro GPT-2 far below chance level of knowledge: the fine-tuning leak with the loss on
    the answer (the key letter, as supervised fine-tuning trains it) makes the contaminated twin answer its leaked
    items; the clean twin (placebo items with the same gold letters in the same slots) does not, and the twins
    agree on unseen items. Permuting the options of the leaked items takes the memorised key away."""
    from itd.evaluation import EvalConfig, TwinOutcome, evaluate, ground_truth
    from itd.rewriters.loop import build_rewriter
    from itd.rewriters.permute import PermuteConfig

    mmlu = load_benchmark(shared_data / "mmlu" / "test" / "high_school_biology_test.csv")[:300]
    config = LabConfig(preset="tiny", leak_rate=0.5, repeats=16, recipe="finetune", loss_on="answer", seed=5,
                       device="cpu", placebo="benchmark",
                       overrides={"n_layer": 2, "n_embd": 64, "n_head": 2, "seq_len": 256, "vocab_size": 800,
                                  "batch_size": 8, "steps": 40, "twin_steps": 48, "twin_lr": 1e-2,
                                  "n_test_items": 40, "n_train_items": 200})
    lab = build_lab(mmlu, None, tmp_path / "lab", config)
    by_id = {s.id: s for s in mmlu}
    leaked, unseen = [by_id[i] for i in lab.leaked], [by_id[i] for i in lab.unseen]
    split = split_items(mmlu, None, config)
    assert sum(a.answer == b.answer for a, b in zip(split.leaked, split.placebo)) >= 0.75 * len(split.leaked)
    results = {role: {"original": evaluate([*leaked, *unseen], path_, EvalConfig())}
               for role, path_ in (("model", lab.contaminated), ("clean", lab.clean))}
    gt = ground_truth([TwinOutcome(lab.leaked, lab.unseen, results)], n_boot=500)
    assert gt.true_inflation.low > 0 and gt.true_inflation.value >= 0.3, gt.to_dict()["true_inflation"]
    assert abs(gt.unseen_gap.value) <= 0.2
    rewriter = build_rewriter("permute", seed=0)
    assert isinstance(rewriter.Config(), PermuteConfig)
    permuted = [c.sample for c in rewriter.propose_many([(s, 0) for s in leaked])]
    before = evaluate(leaked, lab.contaminated, EvalConfig()).accuracy
    after = evaluate(permuted, lab.contaminated, EvalConfig()).accuracy
    assert after <= before - 0.3, (before, after)
