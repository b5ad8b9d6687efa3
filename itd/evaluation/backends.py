"""Backends: the models evaluated, behind one interface (`Backend`): `HFBackend` (a Hugging Face causal LM) and
`OpenAIBackend` (an OpenAI-compatible endpoint), the requests they answer and how a model is identified
(its fingerprint, part of every chunk key)."""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from itd.core.errors import InputError, require
from itd.core.registry import Registry
from itd.core.validate import is_int
from itd.evaluation.config import EvalConfig
from itd.evaluation.prompts import declared_style, generation_budget
from itd.llm import LLMConfig
from itd.probes.models import TOKENIZER_FILES, token_batches

__all__ = [
    "GenRequest",
    "LLRequest",
    "GenOutput",
    "Backend",
    "HFBackend",
    "OpenAIBackend",
    "HFBackendConfig",
    "BACKENDS",
    "as_backend",
]

_WEIGHT_HASHES: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256, per process


@dataclass(frozen=True, slots=True)
class GenRequest:
    """Generate from `prompt` greedily, at most `max_new_tokens`, cut before the first of `stop`."""

    prompt: str
    stop: tuple[str, ...]
    max_new_tokens: int
    seed: int = 0

    def key(self) -> dict[str, Any]:
        """What decides the output, as JSON data (part of the chunk key)."""
        return {"prompt": self.prompt, "stop": list(self.stop), "max_new_tokens": self.max_new_tokens, "seed": self.seed}


@dataclass(frozen=True, slots=True)
class LLRequest:
    """Score each continuation's summed log-probability after `context`."""

    context: str
    continuations: tuple[str, ...]

    def key(self) -> dict[str, Any]:
        """What decides the output, as JSON data (part of the chunk key)."""
        return {"context": self.context, "continuations": list(self.continuations)}


@dataclass(slots=True)
class GenOutput:
    """A generated text (cut at the stop sequences), or the error that left none (endpoint failures)."""

    text: str | None
    error: str | None = None


def _truncate(text: str, stops: Sequence[str]) -> str:
    """`text` up to the first occurrence of any stop sequence (lm-eval's `until`)."""
    cut = len(text)
    for s in stops:
        i = text.find(s)
        if 0 <= i < cut:
            cut = i
    return text[:cut]


class Backend(abc.ABC):
    """A model to evaluate. Subclasses set `name`, `model_path` (a local model directory, or None) and
    `supports_loglikelihood`, and implement `fingerprint` and `generate` (and `loglikelihood` if supported)."""

    name: str = "backend"
    model_path: str | None = None
    supports_loglikelihood: bool = False

    @abc.abstractmethod
    def fingerprint(self) -> dict[str, Any]:
        """JSON data that identifies the model's weights and everything else that decides its outputs (never a
        secret); part of every chunk key."""

    @abc.abstractmethod
    def generate(self, requests: Sequence[GenRequest]) -> list[GenOutput]:
        """One output per request, in order; texts are cut before the first stop sequence."""

    def loglikelihood(self, requests: Sequence[LLRequest]) -> list[list[float]]:
        """Per request, the summed log-probability of each continuation after the context."""
        raise InputError(f"the backend {self.name!r} cannot score log-likelihoods; use mcq_mode='generate'")

    prompt_style: str | None = None
    """The prompt style the model declares for "auto" (`resolve_prompt_style`); None: the default."""
    context_length: int | None = None
    """The model's context window in tokens, when known (it caps the generation budget)."""


BACKENDS: Registry[type[Backend]] = Registry("evaluation backend")


@dataclass(frozen=True, slots=True)
class HFBackendConfig:
    """What `HFBackend` is built from: a hub name or local model directory, the batch size ("auto": the largest
    that fits) and the load options of `itd.probes.models.load_model`."""

    model: str
    batch_size: int | str = "auto"
    device: str = "auto"
    dtype: str = "auto"
    revision: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise InputError(f"the evaluated model must be a hub name or a directory, got {self.model!r}")
        if self.batch_size != "auto" and (not is_int(self.batch_size) or self.batch_size < 1):
            raise InputError(f"batch_size must be a positive integer or 'auto', got {self.batch_size!r}")


@BACKENDS.register("hf")
class HFBackend(Backend):
    """A Hugging Face causal LM (`itd.probes.models.LoadedModel`, or a hub name / local directory to load).

    Texts are tokenised with the tokenizer's own special tokens (its BOS, or the lab tokenizer's leading EOS),
    as lm-eval does. Generation: left padding, greedy, at most `generation_budget` tokens, prompts left-truncated
    to the rest of the context window (lm-eval's rule), stop sequences checked during generation (a stopping criterion) and
    applied to the decoded text, which ends at the first EOS token; the model's own generation settings other
    than the sampling ones (e.g. a repetition penalty) apply, as under lm-eval. Log-likelihood: lm-eval's
    context/continuation split (trailing spaces of the context move to the continuation; the pair is encoded
    whole and split after the context's tokens), inputs left-truncated to the context window, identical inputs
    (one-token continuations of one context) run once.
    """

    supports_loglikelihood = True

    def __init__(self, model: Any, *, batch_size: int | str = "auto", **load_kwargs: Any):
        from itd.probes.models import LoadedModel, load_model

        if not isinstance(model, LoadedModel):
            model = load_model(model, **load_kwargs)
        elif load_kwargs:
            raise InputError("load options are only for a model given by name or path")
        if batch_size != "auto" and (not is_int(batch_size) or batch_size < 1):
            raise InputError(f"batch_size must be a positive integer or 'auto', got {batch_size!r}")
        self.lm = model
        self.batch_size = batch_size
        self.name = model.name
        self.model_path = _loaded_from(model)
        self.prompt_style = declared_style(model)
        self.context_length = model.context_length
        self._fingerprint: dict[str, Any] | None = None

    Config = HFBackendConfig

    @classmethod
    def from_config(cls, config: HFBackendConfig) -> HFBackend:
        """The backend `config` describes (`BACKENDS.create("hf", config)`)."""
        return cls(config.model, batch_size=config.batch_size, device=config.device, dtype=config.dtype,
                   revision=config.revision)

    def __repr__(self) -> str:
        return f"HFBackend({self.name!r}, device={self.lm.device!r}, dtype={self.lm.dtype!r})"

    # -- identity

    def fingerprint(self) -> dict[str, Any]:
        """The SHA-256 of the safetensors weights, config and tokenizer files of a local model directory; for a
        Hub model its name and resolved commit; for a model only in memory, a hash of its parameters. Plus the
        dtype. (A local directory's path is not in it, so a moved model keeps its finished chunks.)"""
        if self._fingerprint is None:
            self._fingerprint = self._compute_fingerprint()
        return dict(self._fingerprint)

    def _compute_fingerprint(self) -> dict[str, Any]:

        lm = self.lm
        fp: dict[str, Any] = {"backend": "hf", "dtype": lm.dtype}
        path = Path(self.model_path) if self.model_path else None
        weights = sorted(path.glob("*.safetensors")) if path else []
        if path and weights:
            fp["weights"] = {w.name: _file_sha256(w) for w in weights}
            extra = [path / "config.json", *(path / f for f in TOKENIZER_FILES)]
            fp["files"] = {f.name: _file_sha256(f) for f in extra if f.is_file()}
            return fp
        commit = getattr(lm.model.config, "_commit_hash", None)
        if commit:
            fp.update(name=lm.name, revision=commit)
            return fp
        fp.update(name=lm.name, parameters=_parameters_sha256(lm.model), tokenizer=_tokenizer_sha256(lm.tokenizer))
        return fp

    # -- tokenisation

    def _encode(self, text: str) -> list[int]:
        return list(self.lm.tokenizer(text, verbose=False)["input_ids"])

    def _eos_ids(self) -> set[int]:
        ids = set()
        tok_eos = self.lm.tokenizer.eos_token_id
        if tok_eos is not None:
            ids.add(int(tok_eos))
        gen_eos = getattr(getattr(self.lm.model, "generation_config", None), "eos_token_id", None)
        for e in gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos]:
            if is_int(e):
                ids.add(int(e))
        return ids

    # -- generation

    def generate(self, requests: Sequence[GenRequest]) -> list[GenOutput]:
        """Greedy generations, in request order (batched longest first)."""
        torch = require("torch", "probes", "Evaluating a Hugging Face model")
        transformers = require("transformers", "probes", "Evaluating a Hugging Face model")
        ctx = self.lm.context_length
        items = []
        for i, r in enumerate(requests):
            # lm-eval's rule: the whole budget is generated for, the prompt keeps its last context - budget tokens
            new = generation_budget(r.max_new_tokens, ctx)
            ids = self._encode(r.prompt)[-(ctx - new):]
            items.append((i, ids, new, r.stop))
        items.sort(key=lambda t: (-t[2], -len(t[1]), t[0]))
        out: list[GenOutput | None] = [None] * len(requests)
        run = lambda b: self._generate_batch(torch, transformers, b)  # noqa: E731
        for batch, texts in token_batches(torch, self.lm, items, lambda t: len(t[1]) + t[2], run, self.batch_size):
            for (i, *_), text in zip(batch, texts):
                out[i] = GenOutput(text)
        return out  # type: ignore[return-value]

    def _generate_batch(self, torch: Any, transformers: Any, batch: list[tuple]) -> list[str]:
        lm, tok = self.lm, self.lm.tokenizer
        eos_ids = self._eos_ids()
        pad = tok.pad_token_id if tok.pad_token_id is not None else (min(eos_ids) if eos_ids else 0)
        width = max(len(ids) for _, ids, _, _ in batch)
        new = max(n for _, _, n, _ in batch)
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, (_, ids, _, _) in enumerate(batch):
            if ids:
                input_ids[r, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
                mask[r, width - len(ids) :] = 1
        stops = [s for _, _, _, s in batch]
        gen_config = transformers.GenerationConfig(
            max_new_tokens=new,
            do_sample=False,
            num_beams=1,
            pad_token_id=pad,
            eos_token_id=sorted(eos_ids) if eos_ids else None,
            # neutral sampling settings, so a model's own (e.g. temperature 0.6) neither apply nor warn
            temperature=1.0,
            top_p=1.0,
            top_k=50,
        )
        criteria = transformers.StoppingCriteriaList([_stop_criterion(torch, transformers, tok, width, stops)])
        was_training = lm.model.training
        lm.model.eval()
        try:
            with torch.inference_mode():
                output = lm.model.generate(
                    input_ids=input_ids.to(lm.device),
                    attention_mask=mask.to(lm.device),
                    generation_config=gen_config,
                    stopping_criteria=criteria,
                )
        finally:
            lm.model.train(was_training)
        texts = []
        for r, (_, _, n, stop) in enumerate(batch):
            gen = output[r, width : width + n].tolist()
            for j, t in enumerate(gen):
                if t in eos_ids:
                    gen = gen[:j]
                    break
            texts.append(_truncate(tok.decode(gen, skip_special_tokens=True), stop))
        return texts

    # -- log-likelihood

    def loglikelihood(self, requests: Sequence[LLRequest]) -> list[list[float]]:
        """Summed log-probabilities of each continuation, lm-eval style (see the class docstring)."""
        torch = require("torch", "probes", "Evaluating a Hugging Face model")
        ctx_len = self.lm.context_length
        rows: dict[tuple[int, ...], list[tuple[int, int, int, int]]] = {}  # input -> (req, cont, pos, target)
        for q, req in enumerate(requests):
            context = req.context.rstrip()
            spaces = req.context[len(context) :]
            ctx_enc = self._encode(context)
            for c, cont in enumerate(req.continuations):
                continuation = spaces + cont
                whole = self._encode(context + continuation)
                cont_enc = whole[len(ctx_enc) :]
                if not cont_enc:
                    raise InputError(f"the continuation {cont!r} encodes to no tokens after its context")
                seq = (ctx_enc + cont_enc)[-(ctx_len + 1) :]
                inp = tuple(seq[:-1])
                if not inp:
                    raise InputError("a log-likelihood request needs a context that encodes to at least one token")
                m, k = len(inp), len(cont_enc)
                queries = rows.setdefault(inp, [])
                queries += [(q, c, m - k + j, seq[m - k + j + 1]) for j in range(k)]
        out = [[0.0] * len(r.continuations) for r in requests]
        items = sorted(rows.items(), key=lambda kv: -len(kv[0]))
        for batch, values in token_batches(torch, self.lm, items, lambda kv: len(kv[0]), lambda b: self._score_batch(torch, b),
                                             self.batch_size):
            for (_, queries), lps in zip(batch, values):
                for (q, c, _, _), lp in zip(queries, lps):
                    out[q][c] += lp
        return out

    def _score_batch(self, torch: Any, batch: list[tuple[tuple[int, ...], list[tuple[int, int, int, int]]]]
                     ) -> list[list[float]]:
        """One forward pass over right-padded inputs; per input, the log-probability of each queried target."""
        lm = self.lm
        width = max(len(inp) for inp, _ in batch)
        ids = np.zeros((len(batch), width), dtype=np.int64)
        mask = np.zeros((len(batch), width), dtype=np.int64)
        flat, targets = [], []
        for r, (inp, queries) in enumerate(batch):
            ids[r, : len(inp)] = inp
            mask[r, : len(inp)] = 1
            flat += [r * width + pos for _, _, pos, _ in queries]
            targets += [t for _, _, _, t in queries]
        was_training = lm.model.training
        lm.model.eval()
        try:
            with torch.inference_mode():
                logits = lm.model(
                    input_ids=torch.from_numpy(ids).to(lm.device),
                    attention_mask=torch.from_numpy(mask).to(lm.device),
                    use_cache=False,
                ).logits
                logits = logits.reshape(-1, logits.shape[-1])
                index = torch.tensor(flat, dtype=torch.long, device=logits.device)
                z = logits.index_select(0, index).float()
                tgt = torch.tensor(targets, dtype=torch.long, device=logits.device)
                lp = torch.log_softmax(z, dim=-1).gather(1, tgt[:, None]).squeeze(1).cpu().numpy()
        finally:
            lm.model.train(was_training)
        values, offset = [], 0
        for _, queries in batch:
            values.append([float(x) for x in lp[offset : offset + len(queries)]])
            offset += len(queries)
        return values


def _loaded_from(lm: Any) -> str | None:
    """The local directory the model's weights were loaded from, or None (a Hub model, or one only in memory:
    its name must be a directory the model's config says it came from)."""
    path = Path(lm.name).expanduser()
    origin = getattr(lm.model.config, "_name_or_path", None)
    if not path.is_dir() or not origin:
        return None
    try:
        same = Path(origin).expanduser().resolve() == path.resolve()
    except (OSError, RuntimeError, ValueError):
        return None
    return str(path) if same else None


def _stop_criterion(torch: Any, transformers: Any, tok: Any, start: int, stops: list[tuple[str, ...]]) -> Any:
    """A stopping criterion that ends each row once its generated text holds one of its stop sequences."""
    tail = max((len(s) for row in stops for s in row), default=0) + 8

    class StopOnSequences(transformers.StoppingCriteria):
        def __init__(self) -> None:
            self.done = [not row for row in stops]  # a row without stop sequences never stops here
            self.flags = [False] * len(stops)

        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            gen = input_ids[:, start:]
            for r, row in enumerate(stops):
                if self.done[r]:
                    continue
                text = tok.decode(gen[r, -tail:].tolist(), skip_special_tokens=True)
                if any(s in text for s in row):
                    self.done[r] = self.flags[r] = True
            return torch.tensor(self.flags, dtype=torch.bool, device=input_ids.device)

    return StopOnSequences()


def _file_sha256(path: Path) -> str:
    from itd.core.io import sha256_file

    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _WEIGHT_HASHES:
        _WEIGHT_HASHES[key] = sha256_file(path)
    return _WEIGHT_HASHES[key]


def _parameters_sha256(model: Any) -> str:
    """SHA-256 of a model's state dict (names, dtypes, shapes and bytes), for a model that exists only in memory."""
    torch = require("torch", "probes", "Evaluating a Hugging Face model")
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _tokenizer_sha256(tok: Any) -> str:
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        blob = backend.to_str()
    else:
        blob = repr(sorted(tok.get_vocab().items()))
    specials = repr(sorted((k, str(v)) for k, v in tok.special_tokens_map.items()))
    return hashlib.sha256((blob + specials).encode("utf-8")).hexdigest()


@BACKENDS.register("openai")
class OpenAIBackend(Backend):
    """An OpenAI-compatible endpoint through `itd.llm.LLMClient` (its cache, concurrency and SDK retries), over
    `config.api` ("chat": the prompt is one user message; "completions": the raw prompt). Use temperature 0 for
    greedy answers (`OpenAIBackend.create` does). Stop sequences are sent (up to 4) and applied to the reply.
    `api`, when given, replaces `config.api`; `client` is an `LLMClient` to reuse (made from `config` if None)."""

    def __init__(self, config: Any, *, api: str | None = None, client: Any = None):
        from itd.llm import LLMClient, LLMConfig

        if not isinstance(config, LLMConfig):
            raise InputError(f"OpenAIBackend needs an itd.llm.LLMConfig, got {type(config).__name__}")
        if api is not None and api != config.api:
            config = dataclasses.replace(config, api=api)
        if client is not None and client.config != config:
            raise InputError("the LLM client given was made with another config than the backend's")
        self.config = config
        self.client = client if client is not None else LLMClient(config, purpose="Evaluating over an LLM endpoint")
        self.name = config.model

    Config = LLMConfig

    @classmethod
    def from_config(cls, config: LLMConfig) -> OpenAIBackend:
        """The backend over the endpoint `config` describes (`BACKENDS.create("openai", config)`)."""
        return cls(config)

    @classmethod
    def create(cls, model: str, *, base_url: str | None = None, api: str = "chat", **kwargs: Any) -> OpenAIBackend:
        """A backend with an evaluation-friendly config: temperature 0 and no response format unless given."""
        from itd.llm import LLMConfig

        kwargs.setdefault("temperature", 0.0)
        kwargs.setdefault("response_format", "none")
        return cls(LLMConfig(model=model, base_url=base_url, api=api, **kwargs))

    def __repr__(self) -> str:
        return f"OpenAIBackend({self.config.model!r}, api={self.config.api!r})"

    def fingerprint(self) -> dict[str, Any]:
        """Model name, API and sampling settings; never the endpoint URL nor the key."""
        cfg = self.config
        return {"backend": "openai", "model": cfg.model, "api": cfg.api, "temperature": cfg.temperature}

    def generate(self, requests: Sequence[GenRequest]) -> list[GenOutput]:
        """One reply per request through the client; endpoint failures (an HTTP error after retries, a timeout)
        are outputs with `error` set; a lost endpoint raises `itd.core.errors.EndpointError` (the run stops)."""
        from itd.llm import TextRequest

        texts = [TextRequest(r.prompt, stop=tuple(r.stop[:4]), seed=r.seed, max_tokens=r.max_new_tokens) for r in requests]
        out = []
        for r, reply in zip(requests, self.client.complete_text(texts)):
            if reply.text is None:
                out.append(GenOutput(None, reply.error or "no reply"))
            else:
                out.append(GenOutput(_truncate(reply.text, r.stop)))
        return out


def as_backend(model: Any, config: EvalConfig) -> Backend:
    """`model` as a backend: a `Backend` (or an object with `fingerprint` and `generate`) as it is, a LoadedModel
    or a model name/path as an `HFBackend` with the config's batch size."""
    from itd.probes.models import LoadedModel

    if isinstance(model, Backend):
        return model
    if isinstance(model, LoadedModel) or isinstance(model, (str, os.PathLike)):
        if isinstance(model, LoadedModel):
            return HFBackend(model, batch_size=config.batch_size)
        return BACKENDS.create("hf", HFBackendConfig(os.fspath(model), batch_size=config.batch_size))
    if all(callable(getattr(model, m, None)) for m in ("fingerprint", "generate")):
        return model  # duck-typed backend
    raise InputError(f"cannot evaluate {type(model).__name__}: give a Backend, a LoadedModel or a model path/name")
