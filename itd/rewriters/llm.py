"""LLM rewriting over any OpenAI-compatible chat endpoint, and an LLM solver for the verification step.

Prompts are text files in `itd/prompts/` with a `[system]` and a `[user]` section and `$question`, `$solution`,
`$choices` placeholders; pass another file to change one. The reply must be one JSON object of the task's schema;
anything else is a failed attempt, kept with its raw text. The item's text only ever fills the placeholders and
the reply is only ever parsed into the schema, so instructions inside an item cannot steer the pipeline.
"""

from __future__ import annotations

import dataclasses
import re
import string
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Sequence

from itd.core import Sample, gsm8k_final_answer
from itd.core.errors import InputError
from itd.core.render import LETTERS
from itd.llm import LLMClient, LLMConfig, LLMReply, LLMRequest
from itd.rewriters.base import REWRITERS, Candidate, NotRewritable, Progress, Rewriter

__all__ = ["Prompt", "load_prompt", "LLMRewriter", "LLMRewriterConfig", "LLMSolver", "LLMJudge", "PROMPTS"]

PROMPTS = ("math_rewrite", "mcq_rewrite", "math_solve", "mcq_solve", "rewrite_judge")


@dataclasses.dataclass(frozen=True, slots=True)
class Prompt:
    """A chat prompt: a system message and a user message template."""

    name: str
    system: str
    user: string.Template

    def messages(self, **fields: str) -> list[dict[str, str]]:
        """The chat messages with `fields` filled in (values are inserted verbatim, never interpreted)."""
        return [{"role": "system", "content": self.system}, {"role": "user", "content": self.user.safe_substitute(fields)}]


def load_prompt(name: str, path: str | Path | None = None) -> Prompt:
    """The packaged prompt `name` (one of `PROMPTS`), or the file at `path` in the same `[system]`/`[user]` form."""
    if path is None:
        if name not in PROMPTS:
            raise InputError(f"unknown prompt {name!r}; packaged prompts: {', '.join(PROMPTS)}")
        text = resources.files("itd.prompts").joinpath(f"{name}.txt").read_text(encoding="utf-8")
        where = f"{name}.txt"
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise InputError(f"cannot read prompt file: {exc.strerror}", path=str(path)) from None
        where = str(path)
    m = re.fullmatch(r"\s*\[system\]\n(.*?)\n\[user\]\n(.*)", text, re.S)
    if not m:
        raise InputError("a prompt file needs a '[system]' line, the system message, a '[user]' line and the user message", path=where, line=1)
    return Prompt(name, m.group(1).strip(), string.Template(m.group(2).strip()))


def _schemas():
    from pydantic import BaseModel, Field

    class MathRewrite(BaseModel):
        question: str = Field(min_length=1)
        solution: str = Field(min_length=1)

    class MCQRewrite(BaseModel):
        question: str = Field(min_length=1)
        choices: list[str] = Field(min_length=2)

    class Answer(BaseModel):
        reasoning: str = ""
        answer: str

    return MathRewrite, MCQRewrite, Answer


def _judge_schema():
    from pydantic import BaseModel

    class Equivalence(BaseModel):
        reasoning: str = ""
        same_question: bool
        same_answer: bool

    return Equivalence


def _choices_block(choices: Sequence[str]) -> str:
    return "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))


class _LLMUser:
    """Shared set-up of the rewriter and the solver: one client, its stats, and progress over reply batches."""

    def __init__(self, llm: LLMConfig):
        if not isinstance(llm, LLMConfig):
            raise TypeError("llm must be an itd.llm.LLMConfig")
        self.llm = llm
        self.client = LLMClient(llm)
        self.stats: dict[str, int] = {}

    def _ask(self, groups: list[tuple[Any, list[int], list[LLMRequest]]], n: int, progress: Progress | None) -> dict[int, LLMReply]:
        """Run each (schema, indices, requests) group; replies by job index; progress over all `n` jobs.
        `stats` accumulates the client's counters (calls, cache hits, failures, tokens) over every batch."""
        replies: dict[int, LLMReply] = {}
        base = 0
        for schema, idx, requests in groups:
            if not requests:
                continue
            before = dict(self.stats)

            def tick(done: int, total: int, stats: dict[str, int], _base: int = base, _before: dict = before) -> None:
                self.stats = {k: _before.get(k, 0) + v for k, v in stats.items()}
                if progress:
                    progress(_base + done, n)

            for i, reply in zip(idx, self.client.complete_json(requests, schema, progress=tick)):
                replies[i] = reply
            base += len(requests)
        return replies


@dataclasses.dataclass(frozen=True)
class LLMRewriterConfig:
    """The `llm` rewriter's settings: the endpoint (`llm`) and the prompt files (None: the packaged prompts)."""

    llm: LLMConfig | None = None
    math_prompt: str | Path | None = None
    mcq_prompt: str | Path | None = None

    def __post_init__(self) -> None:
        if self.llm is None:
            raise InputError("the llm rewriter needs a chat model (the model name, and the endpoint's base URL)")


@REWRITERS.register("llm")
class LLMRewriter(_LLMUser, Rewriter):
    """Paraphrase items with a chat model: a new scenario with the same numbers, steps and answer (math), or a
    synonymous question and options with the same key (multiple choice). Attempt `i` uses seed `llm.seed + i`."""

    name: ClassVar[str] = "llm"
    kind: ClassVar[str] = "paraphrase"

    Config = LLMRewriterConfig

    def __init__(self, llm: LLMConfig, *, math_prompt: str | Path | None = None, mcq_prompt: str | Path | None = None):
        super().__init__(llm)
        self.prompt_paths = {"math": math_prompt, "mcq": mcq_prompt}
        self.math_prompt = load_prompt("math_rewrite", math_prompt)
        self.mcq_prompt = load_prompt("mcq_rewrite", mcq_prompt)

    def config(self) -> dict[str, Any]:
        return {
            "method": self.name,
            "llm": self.llm.to_dict(),
            "prompts": {k: str(v) if v else "packaged" for k, v in self.prompt_paths.items()},
        }

    def propose(self, sample: Sample, attempt: int = 0) -> Candidate:
        result = self.propose_many([(sample, attempt)])[0]
        if isinstance(result, NotRewritable):
            raise result
        return result

    def propose_many(self, jobs: Sequence[tuple[Sample, int]], progress: Progress | None = None) -> list[Candidate | NotRewritable]:
        MathRewrite, MCQRewrite, _ = _schemas()
        out: list[Candidate | NotRewritable | None] = [None] * len(jobs)
        math: tuple[Any, list[int], list[LLMRequest]] = (MathRewrite, [], [])
        mcq: tuple[Any, list[int], list[LLMRequest]] = (MCQRewrite, [], [])
        for i, (s, attempt) in enumerate(jobs):
            seed = self.llm.seed + attempt
            if s.is_mcq and isinstance(s.answer, int):
                msgs = self.mcq_prompt.messages(question=s.question, choices=_choices_block(s.choices or ()))
                group = mcq
            elif s.solution and gsm8k_final_answer(s.solution) is not None:
                msgs = self.math_prompt.messages(question=s.question, solution=s.solution)
                group = math
            else:
                out[i] = NotRewritable("unsupported item: neither a worked math problem nor multiple choice with a key")
                continue
            group[1].append(i)
            group[2].append(LLMRequest(messages=msgs, seed=seed))
        replies = self._ask([math, mcq], len(jobs), progress)
        for i, reply in replies.items():
            out[i] = self._candidate(jobs[i][0], reply)
        if any(o is None for o in out):
            raise RuntimeError("the LLM client returned fewer replies than requests")
        return out  # type: ignore[return-value]

    def _candidate(self, sample: Sample, reply: LLMReply) -> Candidate | NotRewritable:
        info = {"seed": reply.seed, "cached": reply.cached, "usage": reply.usage, "cache_key": reply.key}
        if not reply.ok:
            return NotRewritable(f"bad reply: {reply.error}", raw=reply.text, info=info)
        value = reply.value
        info["raw"] = reply.text
        if sample.is_mcq:
            choices = tuple(c.strip() for c in value.choices)
            if len(choices) != len(sample.choices or ()):
                return NotRewritable(f"bad reply: {len(choices)} options, the item has {len(sample.choices or ())}", raw=reply.text, info=info)
            new = dataclasses.replace(sample, question=value.question.strip(), choices=choices)
            return Candidate(new, sample.answer, info)
        solution = value.solution.strip()
        new = dataclasses.replace(sample, question=value.question.strip(), solution=solution, answer=gsm8k_final_answer(solution))
        return Candidate(new, sample.answer, info)


class LLMSolver(_LLMUser):
    """A `verify.Solver` backed by a chat model: the final number of a math item, the option index of an MCQ.

    `votes(samples, k)` samples `k` answers per item (seeds `llm.seed + j`; use a temperature above 0). A reply
    without a usable answer is asked again with a fresh seed, up to `retries` times per sample, and counts as no
    answer (never as agreement) when it stays unusable."""

    def __init__(self, llm: LLMConfig, *, math_prompt: str | Path | None = None, mcq_prompt: str | Path | None = None,
                 retries: int = 2):
        super().__init__(llm)
        self.math_prompt = load_prompt("math_solve", math_prompt)
        self.mcq_prompt = load_prompt("mcq_solve", mcq_prompt)
        self.retries = retries
        self._retried = 0

    def __call__(self, samples: Sequence[Sample]) -> list[str | int | None]:
        """One answer per item (the first sample of `votes`)."""
        return [v[0] for v in self.votes(samples, 1)]

    def votes(self, samples: Sequence[Sample], k: int) -> list[list[str | int | None]]:
        """`k` sampled answers per item, None for a sample whose replies never gave a usable answer."""
        answers: list[list[str | int | None]] = [[None] * k for _ in samples]
        todo = [(i, j) for i in range(len(samples)) for j in range(k)]
        for attempt in range(self.retries + 1):
            if not todo:
                break
            got = self._ask_once([samples[i] for i, _ in todo], [self.llm.seed + j + attempt * k for _, j in todo])
            for (i, j), answer in zip(todo, got):
                answers[i][j] = answer
            todo = [(i, j) for (i, j), answer in zip(todo, got) if answer is None]
            if attempt < self.retries:
                self._retried += len(todo)
        self.stats["retries"] = self._retried
        return answers

    def _ask_once(self, samples: Sequence[Sample], seeds: Sequence[int]) -> list[str | int | None]:
        _, _, Answer = _schemas()
        math: tuple[Any, list[int], list[LLMRequest]] = (Answer, [], [])
        mcq: tuple[Any, list[int], list[LLMRequest]] = (Answer, [], [])
        for i, (s, seed) in enumerate(zip(samples, seeds)):
            if s.is_mcq:
                mcq[1].append(i)
                mcq[2].append(LLMRequest(self.mcq_prompt.messages(question=s.question, choices=_choices_block(s.choices or ())), seed))
            else:
                math[1].append(i)
                math[2].append(LLMRequest(self.math_prompt.messages(question=s.question), seed))
        replies = self._ask([math, mcq], len(samples), None)
        answers: list[str | int | None] = []
        for i, s in enumerate(samples):
            reply = replies.get(i)
            text = reply.value.answer.strip() if reply is not None and reply.ok else ""
            answers.append(_parse_answer(text, s))
        return answers


class LLMJudge(_LLMUser):
    """A `verify.Judge` backed by a chat model: shown an original item and its rewrite, it answers whether they ask
    the same question with the same answer (`rewrite_judge` prompt, a JSON verdict)."""

    def __init__(self, llm: LLMConfig, *, prompt: str | Path | None = None):
        super().__init__(llm)
        self.prompt = load_prompt("rewrite_judge", prompt)

    def __call__(self, pairs: Sequence[tuple[Sample, Sample]]) -> list[dict[str, Any] | None]:
        requests = [LLMRequest(self.prompt.messages(original=_item_block(a), rewrite=_item_block(b)), None) for a, b in pairs]
        replies = self._ask([(_judge_schema(), list(range(len(pairs))), requests)], len(pairs), None)
        out: list[dict[str, Any] | None] = []
        for i in range(len(pairs)):
            reply = replies.get(i)
            if reply is None or not reply.ok:
                out.append(None)
                continue
            v = reply.value
            out.append({"same_question": v.same_question, "same_answer": v.same_answer, "reason": v.reasoning})
        return out


def _item_block(sample: Sample) -> str:
    """An item as the judge reads it: the question, then the options with the key marked, or the worked solution."""
    if sample.is_mcq:
        key = sample.answer if isinstance(sample.answer, int) else -1
        options = "\n".join(f"{LETTERS[i]}. {c}" + ("   (correct)" if i == key else "") for i, c in enumerate(sample.choices or ()))
        return f"Question: {sample.question}\n\nOptions:\n{options}"
    return f"Question: {sample.question}\n\nSolution:\n{sample.solution or ''}\n\nAnswer: {sample.answer}"


def _parse_answer(text: str, sample: Sample) -> str | int | None:
    if sample.is_mcq:
        m = re.fullmatch(r"\(?([A-Za-z])\)?\.?", text.strip())
        idx = LETTERS.find(m.group(1).upper()) if m else -1
        return idx if 0 <= idx < len(sample.choices or ()) else None
    numbers = re.findall(r"-?\d[\d,]*(?:\.\d+)?", text)
    return numbers[-1].replace(",", "") if numbers else None
