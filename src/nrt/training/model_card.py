"""The model card: README.md in Hugging Face hub format, beside every model nrt writes.

    MODEL_DIR/README.md   YAML front matter (base_model, library_name, tags, datasets, pipeline_tag),
                          then the method and preset, the training data and its sha256, the full
                          config, how to reproduce the run, the metrics of the model's step, the
                          evaluation reports in MODEL_DIR/eval/, the collapse verdict, and how to use it

It is written when a run's final model is saved (`save_final`), when a collapse stop keeps the last
healthy checkpoint as the run's model (`keep_healthy`), and by `nrt export`; `nrt eval` of a directory
that holds one rewrites its Evaluation section with the new report. Everything in it is read from the files on
disk: the run's config.yaml, nrt_run.json and metrics.jsonl, and the model directory's eval/*.json.

`base_model` is in the front matter only when the run's model.model_name_or_path is a hub id (or a
path in the Hugging Face cache, `models--OWNER--NAME`, named by its id): the hub refuses a card
whose base_model is not a model id, so a local base model is named in the text only.
`library_name` is peft for a LoRA run's adapter directory, transformers for a full run and for an
export merged from a LoRA run (which keeps the `lora` tag: the weights were trained through LoRA).
`datasets` holds data.path's name (its file name without the suffix), which is what the card can
know of a local file; its sha256 is in the text.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from nrt.evaluation.report import markdown_table
from nrt.outputs import CARD_MARK, atomic_write_text, report_kind

CARD = "README.md"
EVAL_HEADING = "## Evaluation\n\n"
DEFAULT_TEMPLATE = "{question}\n"  # data.prompt_template's default
# the metrics of a step the card shows, in this order, when the step logged them
CARD_METRICS = {
    "reward_mean": "reward (mean over traces)",
    "reasoning_gain": "reasoning gain (nats: answer log-likelihood after a trace minus without one)",
    "answer_logprob": "answer log-likelihood after a trace",
    "answer_logprob_no_trace": "answer log-likelihood without a trace",
    "trace_length_mean": "trace length (tokens)",
    "response_start_share": "share of traces ending in the answer marker",
    "trace_entropy": "trace token entropy",
    "distinct_3": "distinct 3-gram ratio",
    "zero_std_group_share": "share of groups with zero reward std",
    "loss": "loss",
    "eval_accuracy": "validation accuracy",
}
EVENTS = {"collapse_detected": "collapse detected",
          "nothing_to_reinforce_detected": "nothing to reinforce (every group's rewards equal)"}
HUB_CACHE_DIR = re.compile(r"^models--([^/]+?)--(.+)$")


def read_yaml(path: Path) -> dict:
    import yaml

    try:
        value = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    return value if isinstance(value, dict) else {}


def read_json(path: Path) -> dict:
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def read_records(path: Path) -> list[dict]:
    """metrics.jsonl's readable records; a torn or broken line is left out (the card describes, it does not check)."""
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append(record)
    return records


def run_root(directory: Path) -> Path:
    """The run directory a model directory belongs to: itself, or the run above its checkpoint-N / best."""
    directory = Path(directory)
    if not (directory / "nrt_run.json").is_file() and (directory.parent / "nrt_run.json").is_file():
        return directory.parent
    return directory


def hub_id(name: str | None) -> str | None:
    """`name` as a hub model id, or None for a local path (see the module docstring)."""
    from nrt.model_loading import looks_local

    if not name:
        return None
    for part in reversed(Path(name).parts):
        match = HUB_CACHE_DIR.match(part)
        if match:
            return f"{match.group(1)}/{match.group(2)}"
    if looks_local(name) or Path(name).expanduser().exists():
        return None
    return name


def matching_preset(config: dict) -> str | None:
    """The preset of nrt.presets whose every option has the config's value, else None."""
    from nrt.presets import PRESETS

    for name, preset in PRESETS.items():
        options = preset()
        if all((config.get(key.split(".")[0]) or {}).get(key.split(".")[1]) == value
               for key, value in options.items()):
            return name
    return None


def model_step(model_source: Path, run: Path, records: list[dict]) -> int | None:
    """The training step of the model in `model_source`: a checkpoint's or best's trainer_state.json;
    the run record's finished step; after a collapse stop, the newest checkpoint kept (keep_healthy's
    choice); else the last logged step."""
    from nrt.training.run_record import complete_checkpoints

    state = read_json(Path(model_source) / "trainer_state.json").get("step")
    if isinstance(state, int):
        return state
    finished = read_json(run / "nrt_run.json").get("finished")
    if isinstance(finished, dict) and isinstance(finished.get("step"), int):
        return finished["step"]
    kept = complete_checkpoints(run)
    if kept and any(r.get(flag) for r in records for flag in EVENTS):
        return kept[-1]
    return records[-1]["step"] if records else None


def training_record(records: list[dict], step: int | None) -> dict:
    """The metrics of the training step `step` (the last training step when None or not logged);
    a step that also logged validation holds its eval_accuracy."""
    trained = [r for r in records if "loss" in r or "reward_mean" in r]
    at = [r for r in trained if r["step"] == step]
    return (at or trained or [{}])[-1]


def value_text(value) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return f"{value:.4g}"


def metrics_section(records: list[dict], step: int | None) -> str:
    if not records:
        return "No metrics were logged (metrics.jsonl is empty or missing)."
    record = training_record(records, step)
    last = records[-1]["step"]
    rows = [[label, value_text(record[key])] for key, label in CARD_METRICS.items()
            if record.get(key) is not None]
    validation = [r for r in records if r.get("eval_accuracy") is not None and r["step"] <= (step or last)]
    if validation and "eval_accuracy" not in record:
        latest = validation[-1]
        rows.append([f"validation accuracy (step {latest['step']})", value_text(latest["eval_accuracy"])])
    where = f"step {record.get('step', '?')}" + (
        f" (the run went on to step {last}; this model is from step {record.get('step')})"
        if record.get("step") != last else ", the last logged step")
    return f"Metrics of the model's training step, {where}:\n\n" + markdown_table(["metric", "value"], rows)


def eval_section(model_dir: Path) -> str:
    rows = []
    for path in sorted(Path(model_dir).glob("eval/*.json")):
        report = read_json(path)
        summary = report.get("summary")
        if report.get("nrt_report") != "eval report" or not isinstance(summary, dict):
            continue
        cells = [summary.get(k) for k in ("n", "accuracy", "think_share", "trace_length_mean", "reasoning_gain")]
        if any(not isinstance(c, (int, float)) for c in cells):
            continue
        n, accuracy, think, length, gain = cells
        rows.append([path.stem, str(n), f"{100 * accuracy:.1f} %", f"{100 * think:.1f} %", f"{length:.1f}",
                     f"{gain:+.3f}", f"`{report.get('data', '?')}`"])
    if not rows:
        return ("No evaluation report yet: `nrt eval --model DIR --data test.jsonl` writes one to DIR/eval/ "
                "and adds it here.")
    return ("Greedy think-then-answer, exact match (`nrt eval`; reports in eval/):\n\n" + markdown_table(
        ["evaluation", "n", "accuracy", "answers after a trace", "trace length", "reasoning gain", "data"], rows))


def collapse_section(records: list[dict]) -> str:
    found = [(r["step"], label) for r in records for flag, label in EVENTS.items() if r.get(flag)]
    if not found:
        return ("None: the collapse detector (trace length and entropy against their start, groups with "
                "nothing to reinforce) flagged no step.")
    return "\n".join(f"- step {step}: {label}" for step, label in found)


def usage_section(adapter: bool, prompt_template: str, think_prompt: str) -> str:
    rs = "<|response_start|>"
    merge = ("This directory holds a LoRA adapter (peft's format) with the tokenizer and the "
             f"`{rs}` embedding rows it trained; merge it into a plain model first:\n\n"
             "```bash\nnrt export --model DIR --merge --output-dir MERGED\n```\n\nthen use MERGED below.\n\n"
             ) if adapter else ""
    template = json.dumps(prompt_template)
    think = (f"\nTraining appended {json.dumps(think_prompt)} to every question on a new line "
             "(data.think_prompt): do the same." if think_prompt else "")
    return f"""{merge}The model writes a reasoning trace, then the token `{rs}`, then the answer: the text after
the marker is the answer. The prompt is the tokenizer's chat template with a generation prompt
(one user turn) when it has one, else the plain template {template} that training used.{think}

```bash
nrt generate --model DIR --question "..."      # prints the trace and the answer
```

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("DIR")
model = AutoModelForCausalLM.from_pretrained("DIR")
prompt = {template}.format(question="...")  # or tokenizer.apply_chat_template(..., add_generation_prompt=True)
ids = tokenizer(prompt, return_tensors="pt").input_ids
out = model.generate(ids, max_new_tokens=256, do_sample=False)
text = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=False)  # keep the marker
trace, _, answer = text.partition("{rs}")
```

```bash
# with nrt installed beside vLLM: the trace comes back as `reasoning`, the answer as `content` (docs/SERVING.md)
vllm serve DIR --reasoning-parser nrt --logits-processors nrt.serving.trace_end:TraceEndsAtMarker
# a model without a chat template: add --chat-template .../nrt/serving/plain_prompt.jinja (the "{{question}}\\n" prompt)
```
"""


def front_matter(config: dict, adapter: bool) -> dict:
    model, data = config.get("model") or {}, config.get("data") or {}
    method = matching_preset(config) or (config.get("method") or {}).get("objective") or "nrt"
    meta = {}
    base = hub_id(model.get("model_name_or_path"))
    if base:
        meta["base_model"] = base
    meta["library_name"] = "peft" if adapter else "transformers"
    tags = ["nrt", "native-reasoning-training", method]
    if model.get("use_peft"):
        tags.append("lora")
    meta["tags"] = list(dict.fromkeys(tags))
    if data.get("path"):
        meta["datasets"] = [Path(str(data["path"]).rstrip("/")).stem]
    meta["pipeline_tag"] = "text-generation"
    return meta


def nrt_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nrt")
    except PackageNotFoundError:
        return "unknown"


def model_card(run_dir: str | Path, model_dir: str | Path | None = None, step: int | None = None) -> str:
    """The card of the model in `model_dir` (default: `run_dir` itself) trained by the run in `run_dir`
    (a run directory, or one of its checkpoint-N / best); reads only the files on disk. `step`: the
    model's training step when the caller knows it (a save that has not yet recorded it), else read
    from the files (model_step)."""
    import yaml

    source = Path(run_dir)
    model_dir = Path(model_dir) if model_dir is not None else source
    run = run_root(source)
    config_path = source / "config.yaml" if (source / "config.yaml").is_file() else run / "config.yaml"
    config = read_yaml(config_path)
    record = read_json(run / "nrt_run.json")
    records = read_records(run / "metrics.jsonl")
    adapter = (model_dir / "adapter_config.json").is_file()
    model, data, method = config.get("model") or {}, config.get("data") or {}, config.get("method") or {}
    preset = matching_preset(config)
    step = step if step is not None else model_step(source, run, records)
    meta = yaml.safe_dump(front_matter(config, adapter), sort_keys=False).strip()
    merged = model.get("use_peft") and not adapter
    what = (f"LoRA adapters (rank {model.get('lora_r')}, alpha {model.get('lora_alpha')}"
            f"{', merged into the base weights by `nrt export --merge`' if merged else ''})"
            if model.get("use_peft") else "all weights")
    method_rows = [[f"method.{k}", f"`{v}`"] for k, v in method.items()]
    data_rows = [["training data (data.path)", f"`{data.get('path')}`", f"`{record.get('data_digest') or 'unknown'}`"]]
    if data.get("eval_path"):
        data_rows.append(["validation data (data.eval_path)", f"`{data['eval_path']}`",
                          f"`{record.get('eval_digest') or 'unknown'}`"])
    command = record.get("command")
    reproduce = (f"```bash\n{command}\n```" if command else
                 "The run's command line was not recorded; its config.yaml below holds every option, so\n\n"
                 "```bash\nnrt train --config config.yaml --output-dir NEW_DIR\n```\n\n"
                 "trains it again (with the same model and data files; their sha256 is above).")
    title = run.resolve().name
    return f"""---
{meta}
---

{CARD_MARK}

# {title}

`{model.get('model_name_or_path')}` trained with Native Reasoning Training (nrt {nrt_version()}): the model
samples a reasoning trace before `<|response_start|>` and its answer, and learns from how much each
trace raises the likelihood of the reference answer (no verifier, no reasoning data).

- base model: `{model.get('model_name_or_path')}`
- method: {f'the `{preset}` preset' if preset else 'custom options (no preset of nrt.presets matches)'}; {what} trained
- this model: step {step if step is not None else 'unknown'} of the run

## Method

{markdown_table(['option', 'value'], method_rows) if method_rows else 'config.yaml holds no method options.'}

## Training data

{markdown_table(['', 'path', 'sha256'], data_rows)}

## Results

{metrics_section(records, step)}

{EVAL_HEADING}{eval_section(model_dir)}

## Collapse

{collapse_section(records)}

## Use

{usage_section(adapter, data.get('prompt_template') or DEFAULT_TEMPLATE, data.get('think_prompt') or '')}
## Reproduce

{reproduce}

## Config

```yaml
{yaml.safe_dump(config, sort_keys=False).strip() if config else '# config.yaml is missing'}
```
"""


def write_model_card(run_dir: str | Path, model_dir: str | Path | None = None, step: int | None = None) -> Path:
    """Write the card to MODEL_DIR/README.md (default: the run directory), atomically. A run directory's
    README.md is the run's own file (peft's save_pretrained writes one there too), so it is replaced."""
    model_dir = Path(model_dir) if model_dir is not None else Path(run_dir)
    path = model_dir / CARD
    atomic_write_text(path, model_card(run_dir, model_dir, step))
    return path


def refresh_model_card(model_dir: str | Path) -> Path | None:
    """After `nrt eval` added a report to MODEL_DIR/eval/: rewrite the Evaluation section of
    MODEL_DIR/README.md when it is nrt's card (an export's card too, whose run's files are elsewhere);
    a README.md of anyone else, or none, is left as it is (None)."""
    path = Path(model_dir) / CARD
    if report_kind(path) != "model card":
        return None
    text = path.read_text(encoding="utf-8")
    start = text.find(EVAL_HEADING)
    end = text.find("\n## ", start + len(EVAL_HEADING)) if start >= 0 else -1
    if end < 0:
        return None
    atomic_write_text(path, text[:start + len(EVAL_HEADING)] + eval_section(Path(model_dir)) + "\n" + text[end:])
    return path
