"""Data-parallel probe scoring (`itd.probes.parallel`): one model replica per device, results merged in item order.

No GPU is needed: two CPU replicas (`device="cpu,cpu"`, one in this process, one spawned) must give the scores of
single-process scoring, through `score_texts`, a results store, `detect` and the `itd detect` command.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from itd.cli.commands import main  # noqa: E402
from itd.core import load_benchmark  # noqa: E402
from itd.core.errors import InputError  # noqa: E402
from itd.core.io import Journal  # noqa: E402
from itd.core.render import render  # noqa: E402
from itd.probes.detection import DetectConfig, detect  # noqa: E402
from itd.probes.models import ModelSpec, ScoreConfig, load_model, score_texts  # noqa: E402
from itd.probes.parallel import parse_devices, split_balanced  # noqa: E402

METHODS = ("loss", "zlib", "mink", "minkpp", "lowercase", "reference")


def _save_model(path, texts: list[str], seed: int) -> None:
    """A random 2-layer GPT-2 with a byte-level BPE trained on `texts` (no network)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=["<|bos|>", "<|eos|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|eos|>")
    torch.manual_seed(seed)
    config = transformers.GPT2Config(vocab_size=len(fast), n_layer=2, n_embd=64, n_head=2, n_positions=512,
                                     initializer_range=0.2, bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id)
    transformers.GPT2LMHeadModel(config).save_pretrained(path)
    fast.save_pretrained(path)


@pytest.fixture(scope="module")
def gsm8k(shared_data):
    return load_benchmark(shared_data / "gsm8k" / "test.jsonl")


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory, shared_data):
    train = [s.question for s in load_benchmark(shared_data / "gsm8k" / "train.jsonl")[:500]]
    dirs = []
    for seed in (0, 1):
        path = tmp_path_factory.mktemp(f"gpt2-{seed}")
        _save_model(path, train[seed * 250 : (seed + 1) * 250], seed)
        dirs.append(path)
    return dirs


@pytest.fixture(scope="module")
def single(model_dirs):
    return load_model(model_dirs[0], device="cpu")


@pytest.fixture(scope="module")
def replicated(model_dirs):
    lm = load_model(model_dirs[0], device="cpu,cpu")
    yield lm
    lm.replicas.close()


@pytest.fixture(scope="module")
def reference(model_dirs):
    return load_model(model_dirs[1], device="cpu")


def _assert_same(a, b, exact: bool = False) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.n_tokens == y.n_tokens and x.scores.keys() == y.scores.keys()
        if exact:
            assert x.scores == y.scores
            np.testing.assert_array_equal(x.token_logprobs, y.token_logprobs)
        else:
            for m in x.scores:
                assert x.scores[m] == pytest.approx(y.scores[m], rel=1e-4, abs=1e-5, nan_ok=True), m
            np.testing.assert_allclose(x.token_logprobs, y.token_logprobs, atol=1e-4)
            np.testing.assert_allclose(x.token_minkpp, y.token_minkpp, atol=1e-3)


def test_device_lists_and_splits():
    assert parse_devices("cpu") is None and parse_devices("cuda:1") is None
    assert parse_devices("cuda, cuda") == ["cuda:0", "cuda:1"]
    assert parse_devices("cuda:0,cuda:3,cpu") == ["cuda:0", "cuda:3", "cpu"]
    for bad in ("cpu,auto", "cuda:x,cpu", "tpu,cpu"):
        with pytest.raises(InputError, match="bad device"):
            parse_devices(bad)
    with pytest.raises(InputError, match="comma-separated"):
        ModelSpec("m", device="gpu")
    assert ModelSpec("m", device="cuda:0,cuda:1").device == "cuda:0,cuda:1"
    assert split_balanced([1, 1, 100], 3) == [(0, 1), (1, 2), (2, 3)]
    assert split_balanced([5] * 10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert split_balanced([3, 4], 5) == [(0, 1), (1, 2)] and split_balanced([], 2) == []
    for n, parts in ((17, 2), (100, 3), (5, 5)):
        ranges = split_balanced(list(range(n)), parts)
        assert ranges[0][0] == 0 and ranges[-1][1] == n and len(ranges) == parts
        assert all(a[1] == b[0] and a[0] < a[1] for a, b in zip(ranges, ranges[1:]))


@pytest.mark.slow
def test_two_cpu_replicas_score_like_one_process(single, replicated, reference, gsm8k):
    assert replicated.replicas.size == 2 and replicated.device == "cpu"
    texts = [render(s, "auto") for s in gsm8k[:40]] + ["", "Janet"]  # an empty text and a one-token one
    config = ScoreConfig(methods=METHODS)
    seen = []
    got = score_texts(replicated, texts, config, reference=reference, progress=lambda d, t: seen.append((d, t)))
    _assert_same(got, score_texts(single, texts, config, reference=reference))
    assert seen[-1][0] == seen[-1][1] > 0 and [d for d, _ in seen] == sorted(d for d, _ in seen)
    # the two halves were really scored apart: the worker's half arrives as its own progress stream
    assert len({t for _, t in seen}) > 1


def test_replicas_through_a_results_store(single, replicated, gsm8k, tmp_path):
    """Store chunks are scored whole, one per replica: the very batches of one device, so identical scores."""
    texts = [render(s, "question") for s in gsm8k[:140]]  # three store chunks
    config = ScoreConfig(methods=("loss", "minkpp"))
    from dataclasses import replace

    store = Journal(tmp_path / "scores.jsonl")
    got = score_texts(replace(replicated, store=store), texts, config)
    assert len(Journal(tmp_path / "scores.jsonl")) == 3
    _assert_same(got, score_texts(replace(single, store=Journal(tmp_path / "single.jsonl")), texts, config), exact=True)
    _assert_same(got, score_texts(single, texts, config))  # other batches: equal up to float noise
    again = score_texts(replace(replicated, store=Journal(tmp_path / "scores.jsonl")), texts, config)  # all recorded
    _assert_same(again, got, exact=True)


def test_detect_with_replicas(single, replicated, gsm8k):
    config = DetectConfig(methods=("loss", "zlib", "minkpp"))
    one = detect(gsm8k[:50], single, gsm8k[300:360], config)
    two = detect(gsm8k[:50], replicated, gsm8k[300:360], config)
    assert [it.sample.id for it in two.items] == [it.sample.id for it in one.items]
    for a, b in zip(one.items, two.items):
        for m in config.methods:
            assert b.scores[m] == pytest.approx(a.scores[m], rel=1e-4, abs=1e-5)
        assert b.p_values == a.p_values and b.flag == a.flag


@pytest.mark.slow
def test_cli_detect_on_two_devices(model_dirs, shared_data, tmp_path, capsys):
    bench = tmp_path / "bench.jsonl"
    with open(shared_data / "gsm8k" / "test.jsonl", encoding="utf-8") as f:
        bench.write_text("".join(line for line, _ in zip(f, range(30))), encoding="utf-8")
    bench = str(bench)
    outs = {}
    for device in ("cpu", "cpu,cpu"):
        out = tmp_path / f"{device.replace(',', '_')}.jsonl"
        rc = main(["detect", bench, "--model", str(model_dirs[0]), "--device", device, "--methods", "loss,minkpp",
                   "--threshold", "1000", "--json", "-q", "--out", str(out)])
        assert rc == 0, capsys.readouterr().err
        outs[device] = [json.loads(line) for line in out.read_text().splitlines()]
    capsys.readouterr()
    assert [r["id"] for r in outs["cpu,cpu"]] == [r["id"] for r in outs["cpu"]]
    for a, b in zip(outs["cpu"], outs["cpu,cpu"]):
        assert b["minkpp"] == pytest.approx(a["minkpp"], rel=1e-4, abs=1e-5) and b["n_tokens"] == a["n_tokens"]


@pytest.mark.slow
def test_a_dead_replica_is_an_error_not_a_hang(model_dirs):
    lm = load_model(model_dirs[0], device="cpu,cpu")
    try:
        proc = lm.replicas._procs[0]
        proc.kill()
        proc.join(10)
        with pytest.raises(RuntimeError, match="died"):
            score_texts(lm, ["A text to score.", "And another one, a little longer than the first."] * 4)
        assert lm.replicas.closed
        with pytest.raises(RuntimeError, match="stopped"):
            score_texts(lm, ["one", "two"])
    finally:
        lm.replicas.close()
