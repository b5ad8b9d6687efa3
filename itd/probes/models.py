"""Model access and the batched membership-inference probe scorer.

`load_model` loads a Hugging Face causal LM (hub name or local directory, safetensors weights only) and
`score_texts` scores texts with every requested probe from one forward pass per batch:

    model = load_model("EleutherAI/pythia-160m")
    scores = score_texts(model, texts, ScoreConfig(methods=("loss", "zlib", "mink", "minkpp")))

Every method's score is oriented so that HIGHER = MORE LIKELY LEAKED (seen in training). With `nll` the mean
negative log-likelihood (nats per token) of the text's tokens and `logp_t` the log-probability of token t:

* `loss`: -nll (Yeom et al. 2018; the loss attack).
* `zlib`: -nll / zlib_bytes, zlib_bytes = len(zlib.compress(text.encode("utf-8"))) (Carlini et al. 2021).
* `mink`: mean of the lowest k-fraction of the logp_t (Min-K%, Shi et al. 2024).
* `minkpp`: mean of the lowest k-fraction of (logp_t - mu_t) / sigma_t, where mu_t and sigma_t^2 are the mean
  and variance of log p(z | x_<t) for z drawn from the model's own next-token distribution (Min-K%++,
  Zhang et al. 2024). sigma_t^2 is also the variance of the logits under p: one more weighted reduction.
* `lowercase`: -nll / nll_lower, nll_lower the NLL of the lowercased text (Carlini et al. 2021; a second pass).
* `reference`: nll_ref - nll, nll_ref the NLL of the text under a reference model: the log-likelihood ratio of
  the two models (MIMIR's reference attack, Duan et al. 2024); or, with `ReferenceConfig(score="ratio")`,
  -nll / nll_ref (Carlini et al. 2021). If the two tokenizers differ, each model scores the text under its own
  tokenisation: the difference is then that of the text's whole log-likelihoods, over the evaluated model's
  token count (the two per-token means would be in different units).
* `answer_reference`: answer_logp minus the answer's mean log-probability under the reference model.
* `gapk`, `answer_acc`, `answer_logp`, `dcpdd` (one pass; DC-PDD also reads a token-frequency table), `recall` and `conrecall`
  (one or two more passes, the text behind a prefix): see `itd.probes.methods`, which registers every probe and holds
  the parameters of those that have any (`ScoreConfig.options`).

The lowest k-fraction holds max(1, floor(k * n_tokens)) tokens. A text with no scored token gets NaN scores.
Every text gets the tokenizer's BOS token (or EOS when it has none) in front, so its first token is scored too.
Reductions over the vocabulary run in fp32, a bounded chunk of positions at a time; the model is never given
`labels=` (that would make an fp32 copy of all logits).

Several devices: `load_model(..., device="cuda:0,cuda:1")` loads one replica per device and `score_texts`
splits the texts among them (data parallel, `itd.probes.parallel`); `device="auto"` does so on a machine with several
GPUs when the model fits on one of them, and spreads a larger model over the GPUs (`device_map="auto"`).

Over 600 lines because the loader and the batched scorer are one mechanism: the scorer's batching, devices,
replicas and stored results are the loaded model's; the probes' formulas are `itd.probes.methods`' registry.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Protocol, Sequence, TypeAlias, Union

import numpy as np

from itd.core.errors import InputError, quiet_transformers, require
from itd.core.io import Journal, content_key
from itd.core.progress import Progress
from itd.core.registry import close_names
from itd.core.validate import is_int
from itd.probes.methods import PROBES, FrequencyTable, probe_options, uses_reference_model
from itd.probes.parallel import ReplicaPool, parse_devices

__all__ = [
    "METHODS",
    "TOKENIZER_FILES",
    "token_batches",
    "quiet_transformers",
    "resolve_device",
    "cpu_threads",
    "cpu_thread_budget",
    "vocab_size",
    "DEFAULT_METHODS",
    "DEVICES",
    "DTYPES",
    "ModelSpec",
    "LoadedModel",
    "ScoringModel",
    "ModelRef",
    "resolve_model",
    "load_model",
    "load_tokenizer",
    "same_weights",
    "wrap_model",
    "ScoreConfig",
    "ItemScores",
    "score_texts",
    "Progress",
    "AnsweredText",
]

METHODS = ("loss", "zlib", "mink", "minkpp", "lowercase", "reference", "gapk", "answer_acc", "answer_logp",
           "answer_reference", "dcpdd", "recall", "conrecall")  # every probe registered in `itd.probes.methods.PROBES`
DEFAULT_METHODS = ("loss", "zlib", "mink", "minkpp")
DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "bfloat16", "float16", "float32")


TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "spiece.model", "vocab.json", "vocab.txt"
)
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
_CPU_LOGITS_BYTES = 256 << 20  # logits memory of one CPU batch under batch_size="auto"
_CPU_MAX_TOKENS = 4096  # padded tokens per CPU batch under "auto"; larger ran no faster on 2 cores
_CUDA_MAX_TOKENS = 1 << 17  # first try of batch_size="auto" on CUDA; halved on out-of-memory
_CHUNK_ELEMENTS = 1 << 22  # positions x vocabulary per fp32 reduction chunk on CPU (16 MiB per temporary)
_CUDA_CHUNK_ELEMENTS = 1 << 26  # larger on CUDA, where small chunks are kernel-launch bound (256 MiB)
_MIN_VAR = 1e-12
_REPLICA_MEMORY_SHARE = 0.6  # weights may take this share of a GPU's free memory for one replica per GPU
_STORE_CHUNK = 64  # texts per recorded chunk of a stored scoring run


# ---- model access ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ModelSpec:
    """What to load: a hub name or local directory, and where and how. Validated on construction."""

    name_or_path: str
    device: str = "auto"
    dtype: str = "auto"
    trust_remote_code: bool = False
    revision: str | None = None

    def __post_init__(self) -> None:
        if not str(self.name_or_path).strip():
            raise InputError("a model name or path is needed")
        if parse_devices(self.device) is None and not _DEVICE_RE.match(self.device):
            raise InputError(
                f"unknown device {self.device!r}; choose one of {', '.join(DEVICES)}, cuda:N, or a comma-separated "
                "list such as cuda:0,cuda:1 (one model replica per device)"
            )
        if self.dtype not in DTYPES:
            raise InputError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")

    def load(self) -> LoadedModel:
        """Load the model (see `load_model`)."""
        return load_model(
            self.name_or_path,
            device=self.device,
            dtype=self.dtype,
            trust_remote_code=self.trust_remote_code,
            revision=self.revision,
        )


@dataclass(slots=True)
class LoadedModel:
    """A causal LM ready to score: in eval mode, gradients off. `device` is where inputs go."""

    model: Any
    tokenizer: Any
    name: str
    device: str
    dtype: str
    context_length: int
    store: Journal | None = None
    """When set, finished scoring chunks are recorded here and never recomputed (a resumed run)."""
    spec: ModelSpec | None = None
    """What was loaded (None for a model wrapped with `wrap_model`): lets other processes load the same model."""
    replicas: Any = None
    """An `itd.probes.parallel.ReplicaPool` when the model runs with one replica per device; `model` is replica 0."""

    @property
    def fingerprint(self) -> str:
        """What identifies the weights for a results store: the name, the commit of a hub model, and the size
        and modification time of every weight file of a local one (a changed file invalidates the store)."""
        return _fingerprint(self.model, self.name)

    @property
    def prefix_token_id(self) -> int | None:
        """Token put before every text so its first token is scored: BOS, else EOS, else none."""
        tok = self.tokenizer
        return tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id


class ScoringModel(Protocol):
    """What the probes need of a model: a Hugging Face-style causal LM (`model`) with its `tokenizer`, the device
    its inputs go to, its dtype and context length, and an optional results `store`. `LoadedModel` (from
    `load_model` or `wrap_model`) is one; any object with these members serves."""

    model: Any
    tokenizer: Any
    name: str
    device: str
    dtype: str
    context_length: int
    store: Journal | None
    spec: ModelSpec | None
    replicas: Any

    @property
    def fingerprint(self) -> str: ...

    @property
    def prefix_token_id(self) -> int | None: ...


ModelRef: TypeAlias = Union[ScoringModel, str, "os.PathLike[str]"]
"""A model as the public functions take it: a loaded one, or a hub name / local directory that `load_model` loads."""


def resolve_model(model: ModelRef, **load: Any) -> ScoringModel:
    """`model` itself when it is loaded, else `load_model(model, **load)`; anything else is an `InputError`."""
    import inspect

    if isinstance(model, (str, os.PathLike)):
        return load_model(model, **load)
    missing = object()
    members = ("model", "tokenizer", "name", "device", "dtype", "context_length", "store", "spec", "replicas",
               "fingerprint", "prefix_token_id")
    # looked up statically: reading `fingerprint` may stat every weight file
    if any(inspect.getattr_static(model, m, missing) is missing for m in members):
        raise InputError(f"cannot score with a {type(model).__name__}: give a model name or directory, a "
                         "LoadedModel (itd.probes.models.load_model or wrap_model) or an object with its members")
    return model


def same_weights(a: ScoringModel, b: ScoringModel) -> bool:
    """Whether two loaded models hold the same weights (one object, or equal parameters, shape for shape): a
    "reference model" that is the evaluated model itself makes every comparison between them read nothing."""
    if a.model is b.model:
        return True
    pa, pb = list(a.model.parameters()), list(b.model.parameters())
    if len(pa) != len(pb) or any(x.shape != y.shape or x.dtype != y.dtype for x, y in zip(pa, pb)):
        return False
    # tensor by tensor on the first model's device, stopping at the first difference (two trained models differ
    # in their first tensor already)
    return all(x.detach().equal(y.detach().to(x.device)) for x, y in zip(pa, pb))


def load_model(
    name_or_path: str | os.PathLike[str],
    *,
    device: str = "auto",
    dtype: str = "auto",
    trust_remote_code: bool = False,
    revision: str | None = None,
) -> LoadedModel:
    """Load a causal LM and its tokenizer from a local directory or the Hugging Face Hub.

    Only safetensors weights are loaded. `device="auto"` picks CUDA, then MPS, then CPU. `device="auto"` or
    `"cuda"` with several GPUs loads one replica per GPU when the weights fit in a share of one GPU's free memory
    (data-parallel scoring, `itd.probes.parallel`), and otherwise spreads the model over them (`device_map="auto"`)
    when `accelerate` is installed, else uses the first GPU. A comma-separated list (`"cuda:0,cuda:1"`,
    `"cpu,cpu"`) asks for one replica per listed device. `dtype="auto"` is bfloat16 on CUDA when supported (else
    float16), float16 on MPS and float32 on CPU. With `HF_HUB_OFFLINE=1` a hub name is only looked up in the local
    cache; without it an unreachable Hub fails after huggingface_hub's retries. Problems the user can fix raise
    `InputError`.
    """
    spec = ModelSpec(str(name_or_path), device, dtype, trust_remote_code, revision)
    devices = parse_devices(spec.device)
    if devices is not None:
        return _load_replicas(spec, devices)
    require("torch", "probes", "Model probes")  # before transformers, which caches whether torch is there
    with quiet_transformers():
        return _load_one(spec)


def _load_one(spec: ModelSpec) -> LoadedModel:
    """`load_model` of one spec on one device (or spread by `device_map`)."""
    source, local = _resolve_source(spec.name_or_path)
    torch = require("torch", "probes", "Model probes")
    transformers = require("transformers", "probes", "Model probes")
    dev = resolve_device(torch, spec.device)
    torch_dtype = _resolve_dtype(torch, spec.dtype, dev)
    common, where = _hub_options(source, local, spec.revision, spec.trust_remote_code)
    # The config first: one small file, so an unknown or unreachable name fails before anything heavy.
    try:
        config = transformers.AutoConfig.from_pretrained(source, **common)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot load the model config of {where}: {_first_line(exc)}") from exc
    tokenizer = _tokenizer(transformers, source, common, where)
    kwargs: dict[str, Any] = dict(common, config=config, use_safetensors=True)
    kwargs[_dtype_kwarg(transformers)] = torch_dtype
    n_gpus = torch.cuda.device_count() if dev == "cuda" else 0
    if n_gpus > 1 and _fits_one_gpu(torch, transformers, config, torch_dtype, spec.trust_remote_code, n_gpus):
        return _load_replicas(spec, [f"cuda:{i}" for i in range(n_gpus)])
    spread = n_gpus > 1 and _has_module("accelerate")
    if spread:
        kwargs["device_map"] = "auto"
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot load the model weights of {where}: {_first_line(exc)}") from exc
    if not spread:
        model.to("cuda:0" if dev == "cuda" else dev)
    model.requires_grad_(False)
    lm = wrap_model(model, tokenizer, name=spec.name_or_path)
    lm.spec = spec
    return lm


def load_tokenizer(name_or_path: str | os.PathLike[str], *, trust_remote_code: bool = False,
                   revision: str | None = None) -> Any:
    """The tokenizer of the model `load_model` would load from `name_or_path` (a local model directory, checked as
    it checks one, or a Hub name), without its weights."""
    source, local = _resolve_source(str(name_or_path))
    transformers = require("transformers", "probes", "Model probes")
    common, where = _hub_options(source, local, revision, trust_remote_code)
    with quiet_transformers():
        return _tokenizer(transformers, source, common, where)


def _hub_options(source: str, local: bool, revision: str | None, trust_remote_code: bool) -> tuple[dict[str, Any], str]:
    """The `from_pretrained` options of a source, and how errors name it (where it was looked for)."""
    offline = not local and _hub_offline()
    common: dict[str, Any] = {"revision": revision, "trust_remote_code": trust_remote_code}
    if offline:
        common["local_files_only"] = True
    if local:
        where = source
    elif offline:
        where = f"{source!r} (not a local directory, and HF_HUB_OFFLINE is set: only the local Hub cache was searched)"
    else:
        where = f"{source!r} (not a local directory; set HF_HUB_OFFLINE=1 to search only the local Hub cache)"
    return common, where


def _tokenizer(transformers: Any, source: str, common: dict[str, Any], where: str) -> Any:
    try:
        return transformers.AutoTokenizer.from_pretrained(source, **common)
    except (OSError, ValueError, TypeError) as exc:
        raise InputError(f"cannot load the tokenizer of {where}: {_first_line(exc)}") from exc


def _load_replicas(spec: ModelSpec, devices: list[str]) -> LoadedModel:
    """Replica 0 on `devices[0]` in this process, one worker process per further device (`itd.probes.parallel`)."""
    from dataclasses import replace

    lm = load_model(spec.name_or_path, device=devices[0], dtype=spec.dtype,
                    trust_remote_code=spec.trust_remote_code, revision=spec.revision)
    lm.replicas = ReplicaPool(replace(spec, device=devices[0]), devices, load_model, score_texts)
    return lm


def _fits_one_gpu(
    torch: Any, transformers: Any, config: Any, torch_dtype: Any, trust_remote_code: bool, n_gpus: int
) -> bool:
    """Whether the weights fit in `_REPLICA_MEMORY_SHARE` of the free memory of every GPU (counted on the
    meta device, so nothing is allocated); the rest is for activations and logits."""
    try:
        with torch.device("meta"):
            skeleton = transformers.AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except Exception:  # an architecture that cannot be built on the meta device: do not replicate
        return False
    weights = sum(p.numel() for p in skeleton.parameters()) * torch.empty((), dtype=torch_dtype).element_size()
    free = min(torch.cuda.mem_get_info(i)[0] for i in range(n_gpus))
    return weights <= _REPLICA_MEMORY_SHARE * free


def wrap_model(model: Any, tokenizer: Any, *, name: str = "model") -> LoadedModel:
    """A `LoadedModel` for a model already in memory (e.g. one just trained); puts it in eval mode."""
    model.eval()
    emb = model.get_input_embeddings()
    param = emb.weight if emb is not None else next(model.parameters())
    dtype = str(param.dtype).removeprefix("torch.")
    return LoadedModel(model, tokenizer, name, str(param.device), dtype, _context_length(model, tokenizer))


def _resolve_source(name: str) -> tuple[str, bool]:
    """(what to pass to from_pretrained, whether it is a local directory); checks local directories."""
    path = Path(name).expanduser()
    looks_local = (
        path.exists()
        or name.startswith((".", "/", "~"))
        or "\\" in name
        or name.count("/") > 1  # hub ids are "name" or "org/name"
    )
    if not looks_local:
        return name, False
    if not path.exists():
        raise InputError("model path does not exist", str(path))
    if not path.is_dir():
        raise InputError("a model path must be a directory (config.json, tokenizer, safetensors weights)", str(path))
    if not (path / "config.json").is_file():
        raise InputError("no config.json in the model directory", str(path))
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise InputError(f"no tokenizer in the model directory (none of {', '.join(TOKENIZER_FILES)})", str(path))
    if not any(path.glob("*.safetensors")):
        other = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".h5"))
        found = f" (found {', '.join(other[:3])})" if other else ""
        raise InputError(f"no safetensors weights in the model directory{found}; itd loads only *.safetensors", path)
    return str(path), True


def _hub_offline() -> bool:
    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return any(v.strip().upper() in ("1", "ON", "YES", "TRUE") for v in flags)


_BUSY_WINDOW = 0.3  # seconds over which the other processes' CPU use is measured


def _busy_cores_of_others(window: float = _BUSY_WINDOW) -> float | None:
    """How many cores other processes kept busy over the last `window` seconds (Linux `/proc/stat` less this
    process's own CPU time); None where that cannot be read."""
    import time

    def jiffies() -> tuple[int, int]:
        with open("/proc/stat", encoding="ascii") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
        return sum(values) - idle, sum(values)

    try:
        busy0, all0 = jiffies()
        own0 = time.process_time()
        time.sleep(window)
        busy1, all1 = jiffies()
        own1 = time.process_time()
    except (OSError, ValueError, IndexError):
        return None
    if all1 <= all0:
        return None
    cores = os.cpu_count() or 1
    return max(0.0, (busy1 - busy0) / (all1 - all0) * cores - (own1 - own0) / window)


def cpu_threads(torch: Any) -> int:
    """Intra-op threads for CPU work: `$ITD_CPU_THREADS` when set, else torch's default (one per core) less the
    cores other processes keep busy (at least 70% of a core each), at least one. OpenMP threads that share their
    cores with other busy processes wait for each other at every barrier: training the demo's model ran 1.6x
    slower with two threads than with one on two cores beside one or two busy processes
    (`benchmarks/bench_threads.py`, RESULTS §9). Float sums depend on the thread count: a run that must repeat
    another bit for bit sets `ITD_CPU_THREADS`."""
    default = torch.get_num_threads()
    fixed = os.environ.get("ITD_CPU_THREADS", "").strip()
    if fixed:
        if not fixed.isdigit() or int(fixed) < 1:
            raise InputError(f"ITD_CPU_THREADS must be a positive integer, got {fixed!r}")
        return int(fixed)
    others = _busy_cores_of_others()
    if others is None:
        return default
    cores = os.cpu_count() or default
    return max(1, min(default, cores - int(others + 0.3)))


@contextlib.contextmanager
def cpu_thread_budget(torch: Any, threads: int | None = None) -> Iterator[int]:
    """Run the block with `threads` intra-op threads (None: `cpu_threads`), torch's setting restored after;
    yields the count. Inside another budget, the outer one's count stands."""
    global _BUDGET
    if _BUDGET is not None:
        yield _BUDGET
        return
    before = torch.get_num_threads()
    _BUDGET = cpu_threads(torch) if threads is None else threads
    torch.set_num_threads(_BUDGET)
    try:
        yield _BUDGET
    finally:
        torch.set_num_threads(before)
        _BUDGET = None


_BUDGET: int | None = None


def resolve_device(torch: Any, device: str) -> str:
    """The torch device a name asks for: "auto" is CUDA, then MPS, then CPU; InputError when it is not there."""
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        return "mps" if mps is not None and mps.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {device!r} asked for, but CUDA is not available")
    if device == "mps" and not torch.backends.mps.is_available():
        raise InputError("device 'mps' asked for, but MPS is not available")
    return device


def _resolve_dtype(torch: Any, dtype: str, device: str) -> Any:
    if dtype != "auto":
        return getattr(torch, dtype)
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float16 if device == "mps" else torch.float32


def _dtype_kwarg(transformers: Any) -> str:
    major, minor = (int(x) for x in re.findall(r"\d+", transformers.__version__)[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"  # `torch_dtype` was renamed in 4.56


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _context_length(model: Any, tokenizer: Any) -> int:
    config = model.config
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for key in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length", "max_seq_len", "max_sequence_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 1:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and 1 < limit < 10**7 else 2048


# ---- scoring ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ScoreConfig:
    """Which probes to compute and how to batch.

    `k`: fraction of lowest-scoring tokens Min-K% and Min-K%++ average, in (0, 1]. `batch_size`: rows per forward
    pass, or "auto" (a token budget on CPU; on CUDA start large and halve on out-of-memory). `max_length`: window
    in tokens (default: the model's context length); longer items are scored in sliding windows that advance by
    `stride` tokens (default max_length // 2), so every token is scored once with at least
    max_length - stride tokens of left context.
    """

    methods: tuple[str, ...] = DEFAULT_METHODS
    k: float = 0.2
    batch_size: int | Literal["auto"] = "auto"
    max_length: int | None = None
    stride: int | None = None
    options: Any = None
    """Per probe, its parameters (`itd.probes.methods`: a config dataclass or a dict of its fields); after construction
    a dict holding the config of every chosen probe that has parameters."""

    def __post_init__(self) -> None:
        methods = (self.methods,) if isinstance(self.methods, str) else tuple(self.methods)
        methods = tuple(dict.fromkeys(m.strip().lower() for m in methods))
        if not methods:
            raise ValueError("at least one probe method is needed")
        for m in methods:
            if m not in METHODS:
                close = close_names(m, METHODS, n=2)
                hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
                raise ValueError(f"unknown probe method {m!r}.{hint} Known: {', '.join(METHODS)}.")
        object.__setattr__(self, "methods", methods)

        object.__setattr__(self, "options", probe_options(methods, self.options))
        if isinstance(self.k, bool) or not isinstance(self.k, (int, float)) or not 0 < self.k <= 1:
            raise ValueError(f"k must be in (0, 1] (a fraction of the tokens), got {self.k!r}")
        if self.batch_size != "auto" and (not is_int(self.batch_size) or self.batch_size < 1):
            raise ValueError(f"batch_size must be a positive integer or 'auto', got {self.batch_size!r}")
        if self.max_length is not None and (not is_int(self.max_length) or self.max_length < 2):
            raise ValueError(f"max_length must be an integer >= 2, got {self.max_length!r}")
        if self.stride is not None and (not is_int(self.stride) or self.stride < 1):
            raise ValueError(f"stride must be a positive integer, got {self.stride!r}")
        if self.stride is not None and self.max_length is not None and self.stride >= self.max_length:
            raise ValueError(f"stride ({self.stride}) must be smaller than max_length ({self.max_length})")


@dataclass(slots=True)
class ItemScores:
    """Probe scores of one text. `scores[method]`: higher = more likely leaked (see the module docstring).

    `nll`: mean negative log-likelihood in nats per scored token; `ppl` = exp(nll). `token_logprobs[i]`: log p of
    the i-th token of the text given everything before it. `token_minkpp`: the per-token Min-K%++ scores (None
    unless `minkpp` was computed). `lowercase_nll` / `reference_nll`: the second-pass NLLs, when computed, and
    `reference_n_tokens` the tokens the reference model scored;
    `reference_answer_logp`: the reference model's mean log p of an `AnsweredText`'s answer tokens, when
    `answer_reference` ran.
    """

    scores: dict[str, float]
    n_tokens: int
    nll: float
    ppl: float
    token_logprobs: np.ndarray
    token_minkpp: np.ndarray | None = None
    lowercase_nll: float | None = None
    reference_nll: float | None = None
    reference_n_tokens: int | None = None
    reference_answer_logp: float | None = None
    token_gap: np.ndarray | None = None
    """logp_t - max log p at t (<= 0; 0 where the token is the model's top-1), when `gapk` or `answer_acc` ran."""
    answer_start: int | None = None
    """Index (into the token arrays) of the answer's first token, for an `AnsweredText`."""
    prefix_nll: dict[str, float] | None = None
    """The text's NLL behind the `recall` / `conrecall` prefixes ("nonmember", "member"), when computed."""

    def to_dict(self) -> dict[str, Any]:
        """The scalar fields (no per-token arrays), JSON-ready."""
        out: dict[str, Any] = {"scores": dict(self.scores), "n_tokens": self.n_tokens, "nll": self.nll, "ppl": self.ppl}
        if self.lowercase_nll is not None:
            out["lowercase_nll"] = self.lowercase_nll
        if self.reference_nll is not None:
            out["reference_nll"] = self.reference_nll
            out["reference_n_tokens"] = self.reference_n_tokens
        if self.reference_answer_logp is not None:
            out["reference_answer_logp"] = self.reference_answer_logp
        if self.answer_start is not None:
            out["answer_start"] = self.answer_start
        if self.prefix_nll:
            out["prefix_nll"] = dict(self.prefix_nll)
        return out


class AnsweredText(str):
    """A text whose answer starts at character `answer_start` (the question+answer rendering): `answer_acc`
    scores the tokens from there on. Anywhere else it is the plain string."""

    answer_start: int

    def __new__(cls, text: str, answer_start: int) -> AnsweredText:
        obj = super().__new__(cls, text)
        if not 0 <= answer_start <= len(text):
            raise ValueError(f"answer_start {answer_start} lies outside the text (length {len(text)})")
        obj.answer_start = int(answer_start)
        return obj

    def __getnewargs__(self) -> tuple[str, int]:  # type: ignore[override]
        return str(self), self.answer_start

    def __reduce__(self):
        return AnsweredText, (str(self), self.answer_start)


def score_texts(
    model: ScoringModel,
    texts: Sequence[str],
    config: ScoreConfig | None = None,
    *,
    reference: ScoringModel | None = None,
    progress: Progress | None = None,
) -> list[ItemScores]:
    """Score `texts` with `config.methods`; one `ItemScores` per text, in input order.

    `loss`, `zlib`, `mink` and `minkpp` come from one forward pass per batch; `lowercase` adds a pass over the
    lowercased texts and `reference` a pass with the `reference` model. `progress(done, total)` is called after
    every batch, in scored tokens over all passes.
    """
    config = config or ScoreConfig()
    if any(not isinstance(t, str) for t in texts):
        raise TypeError("score_texts needs a sequence of str")
    if uses_reference_model(config.methods) != (reference is not None):
        raise ValueError("the reference-model probes (reference, answer_reference) and a reference model go "
                         "together: give both or neither")
    texts = list(texts)
    if model.store is not None:
        return _score_stored(model, texts, config, reference, progress)
    if model.replicas is not None and len(texts) > 1 and (reference is None or reference.spec is not None):
        return model.replicas.score(model, texts, config, reference, progress)
    freq = _dcpdd_frequencies(model, config) if "dcpdd" in config.methods else None
    ids = _encode(model, texts)
    ref_ids = _encode(reference, texts) if reference is not None else None
    passes: list[tuple[ScoringModel, list[list[int]], tuple[str, ...]]] = [
        (model, ids, _token_stats(config.methods))  # the one pass for every one-pass probe
    ]
    if "lowercase" in config.methods:
        passes.append((model, _encode(model, [t.lower() for t in texts]), ()))
    if reference is not None:
        passes.append((reference, ref_ids, ()))
    prefixes = _prefixes(config)
    for prefix in prefixes.values():
        passes.append((model, _behind_prefix(model, ids, prefix, config), ()))
    total = sum(max(0, len(x) - 1) for _, id_lists, _ in passes for x in id_lists)
    done = [0]

    def tick(n: int) -> None:
        done[0] += n
        if progress is not None:
            progress(done[0], total)

    results = [_token_pass(m, id_lists, stats, config, tick) for m, id_lists, stats in passes]
    main = results[0]
    extra = iter(results[1:])
    lower = next(extra)["lp"] if "lowercase" in config.methods else None
    ref = next(extra)["lp"] if reference is not None else None
    conditioned = {key: next(extra)["lp"] for key in prefixes}
    starts = _answer_token_starts(model, texts, ids)
    ref_starts = _answer_token_starts(reference, texts, ref_ids) if "answer_reference" in config.methods else None
    out = []
    for i, text in enumerate(texts):
        lp = main["lp"][i]
        nll = _nll(lp)
        ppl = math.nan if math.isnan(nll) else math.exp(min(nll, 700.0))
        item = ItemScores({}, int(lp.size), nll, ppl, lp, main["minkpp"][i] if "minkpp" in main else None)
        item.token_gap = main["gap"][i] if "gap" in main else None
        item.answer_start = starts[i]
        if lower is not None:
            item.lowercase_nll = _nll(lower[i])
        if ref is not None:
            item.reference_nll, item.reference_n_tokens = _nll(ref[i]), int(ref[i].size)
            if ref_starts is not None and ref_starts[i] is not None:
                item.reference_answer_logp = _answer_mean(ref[i], ref_starts[i])
        if conditioned:
            # the text's own tokens are the last ones of the prefixed row
            item.prefix_nll = {key: _nll(c[i][c[i].size - lp.size :]) for key, c in conditioned.items()}
        sigma = main["sigma"][i] if "sigma" in main else None
        for m in config.methods:
            item.scores[m] = _method_score(m, item, text, config, ids[i][1:], sigma, freq)
        out.append(item)
    return out


def _token_stats(methods: Sequence[str]) -> tuple[str, ...]:
    """The per-token statistics the one pass computes for `methods` (besides log p)."""
    return tuple(sorted({s for m in methods for s in PROBES.get(m).token_stats}))


def _prefixes(config: ScoreConfig) -> dict[str, str]:
    """The prefixes ReCaLL / Con-ReCall condition on, by role ("nonmember", "member"); InputError if missing."""
    out: dict[str, str] = {}
    if "recall" in config.methods:
        prefix = config.options["recall"].prefix
        if not prefix:
            raise InputError("the 'recall' probe needs a non-member prefix (ReCaLLConfig.prefix; `itd detect` draws "
                             "it from the reference set)")
        out["nonmember"] = prefix
    if "conrecall" in config.methods:
        opts = config.options["conrecall"]
        if not opts.nonmember_prefix or not opts.member_prefix:
            raise InputError("the 'conrecall' probe needs a non-member and a member prefix (ConReCaLLConfig; "
                             "itd detect: --member-prefix, and --reference-set for the non-member one)")
        if out and out["nonmember"] != opts.nonmember_prefix:
            out["conrecall_nonmember"] = opts.nonmember_prefix
        else:
            out["nonmember"] = opts.nonmember_prefix
        out["member"] = opts.member_prefix
    return out


def _behind_prefix(model: ScoringModel, ids: list[list[int]], prefix: str, config: ScoreConfig) -> list[list[int]]:
    """Each item's ids with `prefix`'s tokens between the BOS (or EOS) token and the text; as many of the
    prefix's last tokens as fit in one window with the text."""
    prefix_ids = model.tokenizer(prefix, add_special_tokens=False, verbose=False)["input_ids"]
    max_length = config.max_length or model.context_length
    lead = model.prefix_token_id
    out = []
    for x in ids:
        text = x[1:] if lead is not None else x
        keep = max(0, min(len(prefix_ids), max_length - len(text) - 1))
        out.append(([lead] if lead is not None else []) + prefix_ids[len(prefix_ids) - keep :] + text)
    return out


def _answer_token_starts(model: ScoringModel, texts: list[str], ids: list[list[int]]) -> list[int | None]:
    """For each `AnsweredText`, the index into its token arrays of the first token that reaches into the answer
    (ends past `answer_start`); None for plain texts."""
    out: list[int | None] = [None] * len(texts)
    todo = [i for i, t in enumerate(texts) if isinstance(t, AnsweredText)]
    if not todo:
        return out
    tok = model.tokenizer
    lead = 0 if model.prefix_token_id is not None else 1  # without a lead token the first text token is unscored
    fast = getattr(tok, "is_fast", False)
    enc = tok([texts[i] for i in todo], add_special_tokens=False, return_offsets_mapping=True, verbose=False) if fast else None
    for j, i in enumerate(todo):
        start = texts[i].answer_start  # type: ignore[attr-defined]
        n_text = len(ids[i]) - (1 - lead)
        if enc is not None:
            ends = [e for _, e in enc["offset_mapping"][j]]
            first = next((t for t, e in enumerate(ends) if e > start), n_text)
        else:
            first = len(tok(texts[i][:start], add_special_tokens=False)["input_ids"])
        out[i] = max(0, first - lead)
    return out


def _dcpdd_frequencies(model: ScoringModel, config: ScoreConfig) -> np.ndarray:
    """The smoothed token frequencies of the DC-PDD table, checked against the model's tokenizer."""
    path = config.options["dcpdd"].table
    if not path:
        raise InputError("the 'dcpdd' probe needs a token-frequency table of the model's tokenizer (DCPDDConfig.table; "
                         "itd detect: --dcpdd-table; build one with itd dcpdd-table)")
    table = _load_table(os.fspath(path), *_mtime(path))
    table.check(model.tokenizer, path=os.fspath(path))
    return table.frequencies()


def _mtime(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return (0, 0)  # FrequencyTable.load names the missing file
    return st.st_mtime_ns, st.st_size


@functools.lru_cache(maxsize=4)
def _load_table(path: str, mtime: int, size: int):
    return FrequencyTable.load(path)


def _score_stored(model: ScoringModel, texts: list[str], config: ScoreConfig, reference: ScoringModel | None,
                  progress: Progress | None) -> list[ItemScores]:
    """`score_texts` through `model.store`: fixed chunks of texts in input order, so a resumed run scores the
    missing chunks in exactly the batches the first run would have, and gets bit-identical scores."""
    import copy
    from dataclasses import asdict

    store = model.store
    bare = copy.copy(model)
    bare.store = None
    ident = [model.fingerprint, reference.fingerprint if reference is not None else None, asdict(config)]
    chunks = [texts[i : i + _STORE_CHUNK] for i in range(0, len(texts), _STORE_CHUNK)]
    # an AnsweredText's answer boundary changes `answer_acc`: it is part of the key (plain texts keep old keys)
    keys = [content_key("score", *ident, chunk, *_answer_marks(chunk)) for chunk in chunks]
    todo = [i for i, key in enumerate(keys) if key not in store]
    sizes = {i: sum(len(t) for t in chunks[i]) or 1 for i in todo}
    total, done = sum(sizes.values()), 0
    if model.replicas is not None and len(todo) > 1 and (reference is None or reference.spec is not None):
        # whole store chunks per replica: each is scored in the batches one device would use, and recorded
        # as soon as it is done
        def record(j: int, scored: list[ItemScores]) -> None:
            nonlocal done
            store.put_many({keys[todo[j]]: [_scores_record(item) for item in scored]})
            done += sizes[todo[j]]
            if progress is not None:
                progress(done, total)

        model.replicas.map(bare, [chunks[i] for i in todo], config, reference, on_done=record)
        todo = []
    for i in todo:
        scored = score_texts(bare, chunks[i], config, reference=reference)
        store.put_many({keys[i]: [_scores_record(item) for item in scored]})
        done += sizes[i]
        if progress is not None:
            progress(done, total)
    return [_scores_from_record(rec) for key in keys for rec in store.get(key)]


def _answer_marks(chunk: list[str]) -> list[list[int | None]]:
    marks = [getattr(t, "answer_start", None) for t in chunk]
    return [marks] if any(m is not None for m in marks) else []


def _scores_record(item: ItemScores) -> dict[str, Any]:
    rec = item.to_dict()
    rec["token_logprobs"] = item.token_logprobs.tolist()
    rec["dtype"] = str(item.token_logprobs.dtype)
    if item.token_minkpp is not None:
        rec["token_minkpp"] = item.token_minkpp.tolist()
    if item.token_gap is not None:
        rec["token_gap"] = item.token_gap.tolist()
    return rec


def _scores_from_record(rec: dict[str, Any]) -> ItemScores:
    dtype = np.dtype(rec["dtype"])
    minkpp, gap = rec.get("token_minkpp"), rec.get("token_gap")
    return ItemScores(
        scores=dict(rec["scores"]),
        n_tokens=rec["n_tokens"],
        nll=rec["nll"],
        ppl=rec["ppl"],
        token_logprobs=np.asarray(rec["token_logprobs"], dtype=dtype),
        token_minkpp=None if minkpp is None else np.asarray(minkpp, dtype=dtype),
        lowercase_nll=rec.get("lowercase_nll"),
        reference_nll=rec.get("reference_nll"),
        reference_n_tokens=rec.get("reference_n_tokens"),
        reference_answer_logp=rec.get("reference_answer_logp"),
        token_gap=None if gap is None else np.asarray(gap, dtype=dtype),
        answer_start=rec.get("answer_start"),
        prefix_nll=rec.get("prefix_nll"),
    )


def _fingerprint(model: Any, name: str) -> str:
    config = getattr(model, "config", None)
    parts: list[Any] = [name, getattr(config, "_commit_hash", None)]
    path = Path(name)
    if path.is_dir():
        parts[0] = str(path.resolve())
        parts += [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(path.iterdir())
                  if f.suffix in (".safetensors", ".json")]
    return content_key(*parts)


def _method_score(method: str, item: ItemScores, text: str, config: ScoreConfig, targets: list[int],
                  sigma: np.ndarray | None, freq: np.ndarray | None) -> float:
    """The score of `method` for one item; `targets` are the ids of its scored tokens (aligned with the token
    arrays), `sigma` the per-token standard deviation of log p (Gap-K%), `freq` the DC-PDD frequencies."""
    if method == "loss":
        return -item.nll
    if method == "zlib":
        return -item.nll / len(zlib.compress(text.encode("utf-8")))
    if method == "mink":
        return _lowest_mean(item.token_logprobs, config.k)
    if method == "minkpp":
        assert item.token_minkpp is not None
        return _lowest_mean(item.token_minkpp, config.k)
    if method == "lowercase":
        return _neg_ratio(item.nll, item.lowercase_nll)
    if method == "reference":
        if config.options["reference"].score == "ratio":
            return _neg_ratio(item.nll, item.reference_nll)
        return _log_likelihood_ratio(item)
    if method == "gapk":
        assert item.token_gap is not None and sigma is not None
        opts = config.options["gapk"]
        return _lowest_mean(_moving_average(item.token_gap.astype(np.float64) / sigma, opts.window), opts.k)
    if method == "answer_acc":
        assert item.token_gap is not None
        if item.answer_start is None or item.answer_start >= item.token_gap.size:
            return math.nan
        return float(np.mean(item.token_gap[item.answer_start :] == 0))
    if method == "answer_logp":
        return math.nan if item.answer_start is None else _answer_mean(item.token_logprobs, item.answer_start)
    if method == "answer_reference":
        if item.answer_start is None or item.reference_answer_logp is None:
            return math.nan
        return _answer_mean(item.token_logprobs, item.answer_start) - item.reference_answer_logp
    if method == "dcpdd":
        assert freq is not None
        return _dcpdd(item.token_logprobs, np.asarray(targets, dtype=np.int64), freq, config.options["dcpdd"].max_alpha)
    if method == "recall":
        assert item.prefix_nll is not None
        return _ratio(item.prefix_nll["nonmember"], item.nll)
    if method == "conrecall":
        assert item.prefix_nll is not None
        nonmember = item.prefix_nll.get("conrecall_nonmember", item.prefix_nll["nonmember"])
        return _ratio(nonmember - config.options["conrecall"].gamma * item.prefix_nll["member"], item.nll)
    raise AssertionError(method)


def _answer_mean(logprobs: np.ndarray, start: int) -> float:
    """Mean log p of the answer's tokens (from index `start` on); NaN when the answer has no scored token."""
    if start >= logprobs.size:
        return math.nan
    return float(np.mean(logprobs[start:], dtype=np.float64))


def _moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Means of every `window` consecutive values; the values themselves when there are fewer."""
    if values.size < window:
        return values
    cum = np.concatenate(([0.0], np.cumsum(values, dtype=np.float64)))
    return (cum[window:] - cum[:-window]) / window


def _dcpdd(logprobs: np.ndarray, targets: np.ndarray, freq: np.ndarray, max_alpha: float) -> float:
    """Mean over the first occurrence of each token id of min(p_t * -log f(x_t), max_alpha); NaN when empty."""
    if targets.size == 0:
        return math.nan
    _, first = np.unique(targets, return_index=True)
    alpha = np.exp(logprobs[first].astype(np.float64)) * -np.log(freq[targets[first]])
    return float(np.minimum(alpha, max_alpha).mean())


def _ratio(ll_nll: float, nll: float) -> float:
    """LL(x | P) / LL(x) from the two NLLs (the signs cancel); NaN when undefined."""
    if math.isnan(ll_nll) or not nll > 0:
        return math.nan
    return ll_nll / nll


def _lowest_mean(values: np.ndarray, k: float) -> float:
    """Mean of the lowest max(1, floor(k * n)) values; NaN for an empty array."""
    n = values.size
    if n == 0:
        return math.nan
    m = max(1, int(math.floor(n * k + 1e-9)))  # the epsilon keeps e.g. 0.57 * 100 at 57
    return float(np.partition(values, m - 1)[:m].mean(dtype=np.float64))


def _neg_ratio(nll: float, other: float | None) -> float:
    if other is None or not other > 0 or math.isnan(nll):
        return math.nan
    return -nll / other


def _log_likelihood_ratio(item: ItemScores) -> float:
    """log p_model(text) - log p_reference(text) over the evaluated model's token count: nll_ref - nll when both
    models tokenise the text alike. NaN when either has no scored token."""
    if item.reference_nll is None or not item.reference_n_tokens or not item.n_tokens:
        return math.nan
    return (item.reference_nll * item.reference_n_tokens - item.nll * item.n_tokens) / item.n_tokens


def _nll(lp: np.ndarray) -> float:
    return -float(lp.mean(dtype=np.float64)) if lp.size else math.nan


def _encode(model: ScoringModel, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, with the BOS (or EOS) token in front so the first text token is scored."""
    if not texts:
        return []
    ids = model.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
    prefix = model.prefix_token_id
    return [([prefix] + list(x)) if prefix is not None else list(x) for x in ids]


def _segments(n_ids: list[int], max_length: int, stride: int) -> list[tuple[int, int, int, int]]:
    """Windows (item, start, end, first) over each item's ids: a row ids[start:end] scoring targets first..end-1.

    An item that fits is one window scoring targets 1..n-1. A longer one: a first full window, then windows that
    end `stride` tokens later (the last one at the item's end) and score only the targets past the previous end.
    """
    segs = []
    for i, n in enumerate(n_ids):
        if n < 2:
            continue
        end = min(n, max_length)
        segs.append((i, 0, end, 1))
        while end < n:
            new_end = min(end + stride, n)
            segs.append((i, new_end - max_length, new_end, end))
            end = new_end
    return segs


def _token_pass(
    lm: ScoringModel, id_lists: list[list[int]], stats: tuple[str, ...], config: ScoreConfig,
    tick: Callable[[int], None],
) -> dict[str, list[np.ndarray]]:
    """Per-item token log-probs ("lp") and the per-token `stats` (see `_reduce`) of one model over pre-tokenised
    items."""
    torch = require("torch", "probes", "Model probes")
    max_length = config.max_length or lm.context_length
    if max_length > lm.context_length:
        raise ValueError(f"max_length {max_length} exceeds the context length of {lm.name} ({lm.context_length})")
    stride = config.stride or max(1, max_length // 2)
    if stride >= max_length:
        raise ValueError(f"stride ({stride}) must be smaller than max_length ({max_length})")
    n_ids = [len(ids) for ids in id_lists]
    arrays = {name: [np.empty(max(0, n - 1), dtype=np.float32) for n in n_ids] for name in ("lp", *stats)}
    segs = _segments(n_ids, max_length, stride)
    segs.sort(key=lambda s: s[1] - s[2])  # longest first: an out-of-memory shows on the first batch
    pad = 0  # any id the embedding holds (a tokenizer's added pad id may not): causal attention never sees it
    was_training = lm.model.training
    lm.model.eval()
    try:
        with torch.inference_mode():
            run = lambda batch: _score_batch(torch, lm, id_lists, batch, batch[0][2] - batch[0][1], pad, stats)  # noqa: E731
            for batch, values in token_batches(torch, lm, segs, lambda seg: seg[2] - seg[1], run, config.batch_size):
                offset = 0
                for i, start, end, first in batch:
                    n = end - first
                    for name, flat_values in values.items():
                        arrays[name][i][first - 1 : end - 1] = flat_values[offset : offset + n]
                    offset += n
                tick(offset)
    finally:
        lm.model.train(was_training)
    return arrays


def token_batches(torch: Any, lm: ScoringModel, items: list, width_of: Callable[[Any], int],
                  run: Callable[[list], Any], batch_size: int | str = "auto") -> Iterator[tuple[list, Any]]:
    """Yield (batch, run(batch)) over `items`, sorted longest first: `batch_size` items a batch, or under "auto" a
    budget of padded tokens (`width_of` an item's), on CPU sized to the logits' memory, on CUDA a large one
    halved on out-of-memory until one item a batch. The one batching rule of the probe scorer and evaluation."""
    auto = batch_size == "auto"
    cuda = lm.device.startswith("cuda")
    budget = 0
    if auto and cuda:
        budget = _CUDA_MAX_TOKENS
    elif auto:
        itemsize = torch.empty((), dtype=getattr(torch, lm.dtype)).element_size()
        budget = int(min(_CPU_MAX_TOKENS, max(256, _CPU_LOGITS_BYTES // (vocab_size(lm) * itemsize))))
    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    pos = 0
    while pos < len(items):
        width = max(1, width_of(items[pos]))
        rows = max(1, budget // width) if auto else int(batch_size)
        batch = items[pos : pos + rows]
        try:
            result, failed = run(batch), False
        except oom:
            if not (auto and cuda) or len(batch) == 1:
                raise
            result, failed = None, True
        if failed:  # outside the except block, so the failed batch's tensors can be freed
            torch.cuda.empty_cache()
            budget = max(width, (len(batch) * width) // 2)
            continue
        pos += len(batch)
        yield batch, result


def vocab_size(lm: ScoringModel) -> int:
    """Rows of the model's output layer (the size of the logits), else its config's or tokenizer's vocabulary."""
    out = lm.model.get_output_embeddings()
    if out is not None and hasattr(out, "weight"):
        return int(out.weight.shape[0])
    return int(getattr(lm.model.config, "vocab_size", None) or len(lm.tokenizer))


def _score_batch(
    torch: Any,
    lm: ScoringModel,
    id_lists: list[list[int]],
    batch: list[tuple[int, int, int, int]],
    width: int,
    pad: int,
    stats: tuple[str, ...],
) -> dict[str, np.ndarray]:
    """One forward pass over a right-padded batch of windows; the scored targets' values, window by window."""
    rows = len(batch)
    ids = np.full((rows, width), pad, dtype=np.int64)
    mask = np.zeros((rows, width), dtype=np.int64)
    flat_pos = []
    for r, (i, start, end, first) in enumerate(batch):
        ids[r, : end - start] = id_lists[i][start:end]
        mask[r, : end - start] = 1
        # the logits at local position p predict the token at p + 1
        flat_pos.append(np.arange(first - start - 1, end - start - 1) + r * width)
    flat = np.concatenate(flat_pos)
    targets = ids.reshape(-1)[flat + 1]
    device = lm.device
    logits = lm.model(
        input_ids=torch.from_numpy(ids).to(device),
        attention_mask=torch.from_numpy(mask).to(device),
        use_cache=False,
    ).logits
    vocab = logits.shape[-1]
    logits = logits.reshape(-1, vocab)
    flat_t = torch.from_numpy(flat).to(logits.device)
    targets_t = torch.from_numpy(targets).to(logits.device)
    chunk = max(1, (_CUDA_CHUNK_ELEMENTS if logits.is_cuda else _CHUNK_ELEMENTS) // vocab)
    parts: dict[str, list[Any]] = {}
    for s in range(0, flat.size, chunk):
        reduced = _reduce(torch, logits.index_select(0, flat_t[s : s + chunk]), targets_t[s : s + chunk], stats)
        for name, value in reduced.items():
            parts.setdefault(name, []).append(value)
    return {name: torch.cat(values).cpu().numpy() for name, values in parts.items()}


def _reduce(torch: Any, z: Any, y: Any, stats: tuple[str, ...]) -> dict[str, Any]:
    """Per position, in fp32: "lp", log p(y), and the asked `stats`: "minkpp", the Min-K%++ score
    (log p(y) - mu) / sigma; "sigma"; "gap", log p(y) - max log p (0 where y is the top-1 token).

    `z` (positions x vocabulary) is a fresh copy (index_select), so its buffer is reused.
    """
    z = z.float()
    logp = torch.log_softmax(z, dim=-1)
    lp = logp.gather(1, y[:, None]).squeeze(1)
    out = {"lp": lp}
    if "gap" in stats:
        out["gap"] = lp - logp.max(dim=-1).values
    if "minkpp" in stats or "sigma" in stats:
        p = torch.exp(logp, out=z)
        mu = torch.bmm(p[:, None, :], logp[:, :, None]).view(-1)  # E_p[log p]
        logp.sub_(mu[:, None]).square_()
        var = torch.bmm(p[:, None, :], logp[:, :, None]).view(-1)  # Var_p[log p], centred for fp32 accuracy
        sigma = var.clamp_min(_MIN_VAR).sqrt()
        if "minkpp" in stats:
            out["minkpp"] = (lp - mu) / sigma
        if "sigma" in stats:
            out["sigma"] = sigma
    return out
