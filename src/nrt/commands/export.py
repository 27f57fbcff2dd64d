"""`nrt export --model RUN_DIR --merge --output-dir DIR`: a LoRA run as a plain Hugging Face model.

The run directory (or one of its checkpoint-N / best directories) holds the adapter in peft's
format; the export loads the base model the run trained on (its config.yaml's model, else
adapter_config.json's base_model_name_or_path) or `--base-model`, refused before its weights load
when the adapter was not trained on it (`peft_model.check_base`: config contents, the run's
tokenizer against its vocabulary, the adapter's shapes against its layers), adds `<|response_start|>`
as training did, merges the adapter into the weights and writes model + tokenizer, loadable with
`AutoModelForCausalLM.from_pretrained(DIR)` and usable by `nrt generate` / `nrt eval`, with the run's
model card as README.md (nrt.training.model_card).
The output is written aside and renamed when complete (nrt.outputs.written_whole); DIR must be absent,
empty, or an earlier export (replaced with --overwrite): the output rule of nrt.outputs.
"""

from __future__ import annotations

from pathlib import Path


def add_export(sub) -> None:
    p = sub.add_parser("export", help="merge a LoRA run's adapter into its base model (a plain HF model)")
    p.add_argument("--model", required=True, help="a LoRA run directory (or its checkpoint-N / best)")
    p.add_argument("--merge", action="store_true", help="merge the adapter into the base weights (required)")
    p.add_argument("--output-dir", required=True, help="where the merged model goes (absent, empty, or an "
                   "earlier export)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export in --output-dir")
    p.add_argument("--base-model", default=None, help="base model path (default: the one the run trained on)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                   help="dtype of the merged weights (default: the run's model.dtype, else float32)")
    p.set_defaults(func=run_export)


def run_dtype(run_dir: Path) -> str:
    """model.dtype from the run's config.yaml, float32 when there is none."""
    import yaml

    path = run_dir / "config.yaml"
    if path.is_file():
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            dtype = (raw.get("model") or {}).get("dtype")
        except (yaml.YAMLError, AttributeError, UnicodeDecodeError):
            dtype = None
        if dtype in ("float32", "bfloat16"):
            return dtype
    return "float32"


def export_merged(run_dir: str | Path, output_dir: str | Path, base_model: str | None = None,
                  dtype: str | None = None, overwrite: bool = False) -> Path:
    """Merge the adapter of `run_dir` and write the plain model + tokenizer to `output_dir`."""
    import torch
    from transformers import AutoTokenizer

    from nrt.outputs import check_output_dir, written_whole
    from nrt.training.model_card import write_model_card
    from nrt.training.peft_model import AdapterError, is_adapter_dir, merge_adapter

    run_dir, output_dir = Path(run_dir), Path(output_dir)
    if not is_adapter_dir(run_dir):
        raise AdapterError(f"--model {run_dir}: no adapter_config.json (not a LoRA run directory; "
                           "a full fine-tuning run directory is already a plain model)")
    check_output_dir(output_dir, "export", inputs=[run_dir, base_model], overwrite=overwrite)
    try:  # the run directory's own tokenizer, written by nrt (the adapter folder has no config.json)
        tokenizer = AutoTokenizer.from_pretrained(run_dir)
    except (OSError, ValueError) as e:
        raise AdapterError(f"--model {run_dir}: cannot load its tokenizer ({str(e).splitlines()[0]})") from None
    merged = merge_adapter(run_dir, tokenizer, base_model, getattr(torch, dtype or run_dtype(run_dir)))
    with written_whole(output_dir, "export") as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_model_card(run_dir, tmp)  # README.md: the run's card, for the merged model
    return output_dir


def run_export(args) -> None:
    from nrt.commands.usage import fail
    from nrt.model_loading import ModelLoadError
    from nrt.training.peft_model import AdapterError

    if not args.merge:
        fail("--merge is required (the export merges the adapter into the base model's weights)")
    if not Path(args.model).is_dir():
        fail(f"--model {args.model}: no such directory")
    try:
        out = export_merged(args.model, args.output_dir, args.base_model, args.dtype, args.overwrite)
    except (AdapterError, ModelLoadError) as e:  # a base model's errors name it, not --model
        fail(str(e))
    print(f"merged model: {out}")
