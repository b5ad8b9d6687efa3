"""Model loading and the batched probe scorer, on a tiny random GPT-2 with a locally trained tokenizer (no network)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

import itd.probes.models as M  # noqa: E402
from itd.core.errors import InputError, MissingDependencyError  # noqa: E402
from itd.probes.models import ItemScores, LoadedModel, ModelSpec, ScoreConfig, load_model, score_texts  # noqa: E402

N_POSITIONS = 64
ALL_METHODS = ("loss", "zlib", "mink", "minkpp", "lowercase")


def _gsm8k(shared_data, split: str, n: int) -> list[dict[str, str]]:
    with open(shared_data / "gsm8k" / f"{split}.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line, _ in zip(f, range(n))]


def _train_tokenizer(texts: list[str], with_bos: bool):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|bos|>", "<|eos|>", "<|pad|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer)
    kwargs = {"bos_token": "<|bos|>"} if with_bos else {}
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|eos|>", pad_token="<|pad|>", **kwargs
    )


def _save_tiny_model(path, tokenizer, seed: int) -> None:
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        vocab_size=len(tokenizer),
        n_layer=2,
        n_embd=64,
        n_head=2,
        n_positions=N_POSITIONS,
        initializer_range=0.2,  # far from uniform next-token distributions, so the probes differ per token
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    transformers.GPT2LMHeadModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)


@pytest.fixture(scope="module")
def corpus(shared_data) -> list[str]:
    return [r["question"] for r in _gsm8k(shared_data, "train", 400)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, corpus):
    path = tmp_path_factory.mktemp("tiny-gpt2")
    _save_tiny_model(path, _train_tokenizer(corpus, with_bos=True), seed=0)
    return path


@pytest.fixture(scope="module")
def nobos_dir(tmp_path_factory, corpus):
    path = tmp_path_factory.mktemp("tiny-gpt2-nobos")
    _save_tiny_model(path, _train_tokenizer(corpus[:200], with_bos=False), seed=1)
    return path


@pytest.fixture(scope="module")
def lm(model_dir) -> LoadedModel:
    return load_model(model_dir, device="cpu")


@pytest.fixture(scope="module")
def texts(shared_data, lm) -> list[str]:
    """Prefixes of GSM8K test questions of very different token lengths (3 to 60), so batches are padded."""
    qs = [r["question"] for r in _gsm8k(shared_data, "test", 12)]
    lengths = (3, 8, 15, 25, 40, 55, 60, 12, 33, 48, 5, 58)
    out = [lm.tokenizer.decode(lm.tokenizer(q)["input_ids"][:n]) for q, n in zip(qs, lengths)]
    assert all(len(_ids(lm, t)) <= N_POSITIONS for t in out)  # the plain reference needs one window
    return out + ["Janet", "A Robe takes 2 bolts."]


def _ids(lm: LoadedModel, text: str) -> list[int]:
    return [lm.prefix_token_id] + lm.tokenizer(text, add_special_tokens=False)["input_ids"]


def _plain_logits(lm: LoadedModel, ids: list[int]):
    with torch.no_grad():
        return lm.model(torch.tensor([ids])).logits[0].double()


def _reference_scores(lm: LoadedModel, text: str, k: float) -> dict[str, float]:
    """The published formulas, one position at a time in float64, and the loss through `labels=`."""
    ids = _ids(lm, text)
    with torch.no_grad():
        loss = lm.model(torch.tensor([ids]), labels=torch.tensor([ids])).loss.item()
    logits = _plain_logits(lm, ids)
    logps, pps = [], []
    for t in range(1, len(ids)):
        log_probs = torch.log_softmax(logits[t - 1], dim=-1)
        probs = torch.softmax(logits[t - 1], dim=-1)
        mu = (probs * log_probs).sum()
        sigma = ((probs * log_probs**2).sum() - mu**2).sqrt()
        logps.append(log_probs[ids[t]].item())
        pps.append(((log_probs[ids[t]] - mu) / sigma).item())
    m = max(1, int(len(logps) * k))
    return {
        "loss": -loss,
        "zlib": -loss / len(zlib.compress(text.encode("utf-8"))),
        "mink": float(np.mean(np.sort(logps)[:m])),
        "minkpp": float(np.mean(np.sort(pps)[:m])),
        "logps": np.array(logps),
        "pps": np.array(pps),
    }


def _assert_same(a: ItemScores, b: ItemScores, tol: float = 1e-4) -> None:
    assert a.n_tokens == b.n_tokens
    assert a.scores.keys() == b.scores.keys()
    for m in a.scores:
        assert a.scores[m] == pytest.approx(b.scores[m], abs=tol), m
    np.testing.assert_allclose(a.token_logprobs, b.token_logprobs, atol=tol)
    np.testing.assert_allclose(a.token_minkpp, b.token_minkpp, atol=tol)


# ---- loading ----------------------------------------------------------------------------------------------------
def test_load_model_from_directory(lm, model_dir):
    assert (lm.device, lm.dtype, lm.context_length) == ("cpu", "float32", N_POSITIONS)
    assert lm.name == str(model_dir)
    assert not lm.model.training
    assert not any(p.requires_grad for p in lm.model.parameters())
    assert lm.prefix_token_id == lm.tokenizer.bos_token_id is not None
    assert ModelSpec(str(model_dir), device="cpu").load().context_length == N_POSITIONS


def test_load_model_errors(tmp_path, model_dir, corpus, monkeypatch):
    with pytest.raises(InputError, match="does not exist") as err:
        load_model(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(err.value)

    no_tok = tmp_path / "no-tokenizer"
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=1, n_embd=8, n_head=1, vocab_size=50, bos_token_id=0, eos_token_id=0)
    transformers.GPT2LMHeadModel(config).save_pretrained(no_tok)
    with pytest.raises(InputError, match="no tokenizer") as err:
        load_model(no_tok)
    assert str(no_tok) in str(err.value)

    bin_only = tmp_path / "bin-only"
    _save_tiny_model(bin_only, _train_tokenizer(corpus[:50], with_bos=True), seed=0)
    for weights in bin_only.glob("*.safetensors"):  # keep only a pickled checkpoint
        weights.unlink()
    torch.save(transformers.GPT2LMHeadModel.from_pretrained(model_dir).state_dict(), bin_only / "pytorch_model.bin")
    with pytest.raises(InputError, match="safetensors") as err:
        load_model(bin_only)
    assert str(bin_only) in str(err.value) and "pytorch_model.bin" in str(err.value)

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = time.perf_counter()
    with pytest.raises(InputError, match="itd-tests/no-such-model"):
        load_model("itd-tests/no-such-model")
    assert time.perf_counter() - t < 10

    with pytest.raises(InputError, match="unknown device"):
        load_model(model_dir, device="gpu")
    with pytest.raises(InputError, match="unknown dtype"):
        load_model(model_dir, dtype="fp8")


def test_missing_torch_names_the_extra(model_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'itd\[probes\]'"):
        load_model(model_dir)


def test_import_does_not_need_torch():
    code = "import sys, itd.probes.models; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- config -----------------------------------------------------------------------------------------------------
def test_config_validation():
    with pytest.raises(ValueError, match="Did you mean 'minkpp'"):
        ScoreConfig(methods=("minkp+",))
    with pytest.raises(ValueError, match="Did you mean 'zlib'"):
        ScoreConfig(methods=("loss", "zlip"))
    for k in (0, -0.1, 1.5, True, math.nan):
        with pytest.raises(ValueError, match="k must be in"):
            ScoreConfig(k=k)
    assert ScoreConfig(k=1).k == 1
    for bad in (0, -1, 2.5, "big"):
        with pytest.raises(ValueError, match="batch_size"):
            ScoreConfig(batch_size=bad)
    with pytest.raises(ValueError, match="stride"):
        ScoreConfig(max_length=16, stride=16)
    with pytest.raises(ValueError, match="max_length"):
        ScoreConfig(max_length=1)
    assert ScoreConfig(methods=["Loss", "mink", "loss"]).methods == ("loss", "mink")


def test_score_argument_errors(lm):
    with pytest.raises(ValueError, match="reference"):
        score_texts(lm, ["a"], ScoreConfig(methods=("loss", "reference")))
    with pytest.raises(ValueError, match="reference"):
        score_texts(lm, ["a"], ScoreConfig(methods=("loss",)), reference=lm)
    with pytest.raises(ValueError, match="exceeds the context length"):
        score_texts(lm, ["a"], ScoreConfig(max_length=N_POSITIONS + 1))
    with pytest.raises(TypeError):
        score_texts(lm, [b"bytes"])  # type: ignore[list-item]


# ---- scoring ----------------------------------------------------------------------------------------------------
def test_scores_match_the_published_formulas(lm, texts):
    cfg = ScoreConfig(methods=("loss", "zlib", "mink", "minkpp"), k=0.2, batch_size=4)
    got = score_texts(lm, texts, cfg)
    for text, item in zip(texts, got):
        ref = _reference_scores(lm, text, cfg.k)
        assert item.n_tokens == len(ref["logps"]) > 0
        np.testing.assert_allclose(item.token_logprobs, ref["logps"], atol=1e-4)
        np.testing.assert_allclose(item.token_minkpp, ref["pps"], atol=1e-4)
        for m in cfg.methods:
            assert item.scores[m] == pytest.approx(ref[m], abs=1e-4), m
        assert item.nll == pytest.approx(-ref["loss"], abs=1e-5)
        assert item.ppl == pytest.approx(math.exp(item.nll), rel=1e-9)
    # the probes are not all the same number
    assert len({round(v, 6) for v in got[0].scores.values()}) == 4


def test_batched_equals_unbatched(lm, texts):
    cfg = ScoreConfig(methods=ALL_METHODS, batch_size=5)
    batched = score_texts(lm, texts, cfg)
    lengths = [s.n_tokens for s in batched]
    assert max(lengths) > 3 * min(lengths)  # padding really happens
    auto = score_texts(lm, texts, ScoreConfig(methods=ALL_METHODS))
    for text, b, a in zip(texts, batched, auto):
        single = score_texts(lm, [text], ScoreConfig(methods=ALL_METHODS, batch_size=1))[0]
        _assert_same(b, single)
        _assert_same(a, single)
        assert b.lowercase_nll == pytest.approx(single.lowercase_nll, abs=1e-4)


def test_lowercase_and_reference(lm, model_dir, nobos_dir, texts):
    """`reference` is log p_model(text) - log p_reference(text) per evaluated-model token, each model under its
    own tokenizer (this reference has another vocabulary and no BOS token); or Carlini's NLL ratio."""
    ref = load_model(nobos_dir, device="cpu")
    got = score_texts(lm, texts, ScoreConfig(methods=("loss", "lowercase", "reference")), reference=ref)
    ratio = score_texts(lm, texts, ScoreConfig(methods=("reference",), options={"reference": {"score": "ratio"}}),
                        reference=ref)
    lower = score_texts(lm, [t.lower() for t in texts], ScoreConfig(methods=("loss",)))
    under_ref = score_texts(ref, texts, ScoreConfig(methods=("loss",)))
    assert any(g.n_tokens != r.n_tokens for g, r in zip(got, under_ref))
    for g, q, lo, r in zip(got, ratio, lower, under_ref):
        assert g.lowercase_nll == pytest.approx(lo.nll, abs=1e-6)
        assert g.reference_nll == pytest.approx(r.nll, abs=1e-6) and g.reference_n_tokens == r.n_tokens
        assert g.scores["lowercase"] == pytest.approx(-g.nll / lo.nll, rel=1e-6)
        whole_ratio = r.nll * r.n_tokens - g.nll * g.n_tokens  # log p_model(text) - log p_ref(text)
        assert g.scores["reference"] == pytest.approx(whole_ratio / g.n_tokens, abs=1e-5)
        assert q.scores["reference"] == pytest.approx(-g.nll / r.nll, rel=1e-6)
        assert g.token_minkpp is None
        assert set(g.to_dict()) == {"scores", "n_tokens", "nll", "ppl", "lowercase_nll", "reference_nll",
                                    "reference_n_tokens"}
    with pytest.raises(ValueError, match="difference, ratio"):
        ScoreConfig(methods=("reference",), options={"reference": {"score": "log"}})


def test_tokenizer_without_bos_scores_after_eos(nobos_dir, texts):
    lm = load_model(nobos_dir, device="cpu")
    assert lm.tokenizer.bos_token_id is None
    assert lm.prefix_token_id == lm.tokenizer.eos_token_id
    got = score_texts(lm, texts[:4], ScoreConfig(methods=("loss", "mink", "minkpp")))
    for text, item in zip(texts, got):
        ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
        assert item.n_tokens == len(ids)  # the first text token is scored too
        full = [lm.tokenizer.eos_token_id] + ids
        with torch.no_grad():
            loss = lm.model(torch.tensor([full]), labels=torch.tensor([full])).loss.item()
        assert item.nll == pytest.approx(loss, abs=1e-5)


def test_sliding_window(lm, shared_data):
    rec = _gsm8k(shared_data, "test", 1)[0]
    text = rec["question"] + "\n" + rec["answer"]
    ids = _ids(lm, text)
    n = len(ids)
    assert n > 2 * N_POSITIONS
    default = score_texts(lm, [text])[0]  # max_length = context (64), stride 32
    assert default.n_tokens == n - 1
    assert np.isfinite(default.token_logprobs).all() and np.isfinite(default.token_minkpp).all()

    for length, stride in ((16, 1), (16, 5), (N_POSITIONS, 32)):
        got = score_texts(lm, [text], ScoreConfig(methods=("loss",), max_length=length, stride=stride))[0]
        assert got.n_tokens == n - 1
        starts = []
        for j in range(1, n):
            # windows end at length, length + stride, length + 2 * stride, ..., and at the item's end
            end = length if j < length else min(n, length + math.ceil((j - length + 1) / stride) * stride)
            starts.append(end - length)
            assert j - starts[-1] >= min(j, length - stride)  # at least length - stride tokens of context
        # every window holds `length` tokens, so one unpadded batch computes them all
        windows = sorted(set(starts))
        with torch.no_grad():
            logps = torch.log_softmax(lm.model(torch.tensor([ids[s : s + length] for s in windows])).logits, dim=-1)
        expected = [logps[windows.index(s), j - s - 1, ids[j]].item() for j, s in zip(range(1, n), starts)]
        np.testing.assert_allclose(got.token_logprobs, expected, atol=1e-4, err_msg=f"{length=} {stride=}")

    # inside the first window, scores equal those of the plain (unwindowed) path
    short = lm.tokenizer.decode(ids[1:40])
    plain = score_texts(lm, [short])[0]
    windowed = score_texts(lm, [text], ScoreConfig(max_length=N_POSITIONS, stride=7))[0]
    k = plain.n_tokens
    np.testing.assert_allclose(windowed.token_logprobs[:k], plain.token_logprobs, atol=1e-4)
    np.testing.assert_allclose(windowed.token_minkpp[:k], plain.token_minkpp, atol=1e-4)
    _assert_same(score_texts(lm, [short], ScoreConfig(max_length=N_POSITIONS, stride=3))[0], plain)


def test_progress_order_and_empty_text(lm, texts):
    calls: list[tuple[int, int]] = []
    items = ["", *texts[:6]]
    cfg = ScoreConfig(methods=("loss", "lowercase"), batch_size=2)
    got = score_texts(lm, items, cfg, progress=lambda d, t: calls.append((d, t)))
    total = sum(s.n_tokens for s in got) + sum(len(_ids(lm, t.lower())) - 1 for t in items)  # both passes
    assert calls[-1] == (total, total)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert got[0].n_tokens == 0 and math.isnan(got[0].nll) and all(math.isnan(v) for v in got[0].scores.values())
    for text, item in zip(items[1:], got[1:]):
        assert item.n_tokens == len(_ids(lm, text)) - 1
    assert score_texts(lm, []) == []


def test_auto_batch_halves_on_cuda_out_of_memory(lm, texts, monkeypatch):
    """No GPU here: pretend the model is on CUDA and that batches of more than 3 rows run out of memory."""
    real = M._score_batch
    failed: list[int] = []
    done: list[int] = []

    def fake(torch_, lm_, id_lists, batch, width, pad, stats):
        if len(batch) > 3:
            failed.append(len(batch))
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        done.append(len(batch))
        return real(torch_, lm, id_lists, batch, width, pad, stats)

    monkeypatch.setattr(M, "_score_batch", fake)
    monkeypatch.setattr(M, "_CUDA_MAX_TOKENS", 40 * N_POSITIONS)
    on_cuda = LoadedModel(lm.model, lm.tokenizer, lm.name, "cuda", lm.dtype, lm.context_length)
    got = score_texts(on_cuda, texts, ScoreConfig(methods=("loss", "minkpp")))
    assert failed[:2] == [len(texts), len(texts) // 2]  # all at once first, then half the token budget
    assert sum(done) == len(texts) and max(done) <= 3
    monkeypatch.setattr(M, "_score_batch", real)
    for a, b in zip(got, score_texts(lm, texts, ScoreConfig(methods=("loss", "minkpp"), batch_size=1))):
        _assert_same(a, b)


def test_cpu_threads_leave_the_cores_other_processes_keep_busy(monkeypatch):
    """One thread per free core, at least one; a core counts as taken when others keep it 70% busy;
    `ITD_CPU_THREADS` fixes the count; a budget sets torch's count for its block and restores it."""
    from itd.probes import models
    monkeypatch.delenv("ITD_CPU_THREADS", raising=False)
    monkeypatch.setattr(models.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    for busy, threads in ((0.0, 4), (0.6, 4), (0.8, 3), (2.0, 2), (3.9, 1), (7.5, 1)):
        monkeypatch.setattr(models, "_busy_cores_of_others", lambda busy=busy: busy)
        assert models.cpu_threads(torch) == threads, busy
    monkeypatch.setattr(models, "_busy_cores_of_others", lambda: None)  # not Linux: torch's default
    assert models.cpu_threads(torch) == 4
    monkeypatch.setenv("ITD_CPU_THREADS", "3")
    assert models.cpu_threads(torch) == 3
    monkeypatch.setenv("ITD_CPU_THREADS", "many")
    with pytest.raises(InputError, match="ITD_CPU_THREADS"):
        models.cpu_threads(torch)
    monkeypatch.undo()
    before = torch.get_num_threads()
    with models.cpu_thread_budget(torch, 1) as n:
        assert n == 1 and torch.get_num_threads() == 1
        with models.cpu_thread_budget(torch, 2) as inner:  # the outer budget stands
            assert inner == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    busy = models._busy_cores_of_others(0.05)  # this Linux machine: a number of cores, never this process's own
    assert busy is None or 0.0 <= busy <= (os.cpu_count() or 1)
