#!/usr/bin/env bash
# nrt's own engine and update on one CUDA GPU, in bf16, on SmolLM2-135M's architecture with random weights
# (nrt bench --config-only), beside TRL's GRPOTrainer on the same work where TRL is installed. Offline,
# with the torch and transformers the machine has (torch 2.11+cu130 and transformers 5.17 on the lent H200);
# vLLM's CUDA wheel is far over the 64 MiB a device call carries, so the vLLM path is not part of it.
#
#   here, once:         make real-model && bash scripts/gpu_check.sh --prepare
#                       (SmolLM2's config and tokenizer, 3.5 MB, into artifacts/gpu_check/smollm2; no weights)
#   on the GPU machine: bash scripts/gpu_check.sh [OUT_DIR]          (about 5 minutes on an H200)
#
# Writes OUT_DIR/bench_nrt_cuda.jsonl (the workload of `make bench`'s SmolLM2 rows: 8 questions x 8 traces x
# 128 trace tokens, 16 answer tokens, fixed length), OUT_DIR/compare_trl_cuda.jsonl when TRL imports, and
# OUT_DIR/environment.txt. The numbers go into docs/PERFORMANCE.md with the machine named.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=artifacts/gpu_check/smollm2

if [ "${1:-}" = "--prepare" ]; then
    src=artifacts/models/smollm2-135m-instruct/hf
    [ -f "$src/config.json" ] || { echo "gpu_check: $src/config.json missing: run make real-model first" >&2; exit 2; }
    mkdir -p "$MODEL"
    cp "$src"/config.json "$src"/tokenizer.json "$src"/tokenizer_config.json "$MODEL"/
    cp "$src"/generation_config.json "$src"/chat_template.jinja "$MODEL"/ 2>/dev/null || true
    du -sh "$MODEL"
    exit 0
fi

OUT=${1:-${OUT:-artifacts/gpu_check/out}}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
PY=${PYTHON:-python3}
[ -f "$MODEL/config.json" ] || { echo "gpu_check: $MODEL missing: run 'bash scripts/gpu_check.sh --prepare' here" >&2; exit 2; }
$PY - <<'EOF' | tee "$OUT/environment.txt"
import importlib, torch
assert torch.cuda.is_available(), "gpu_check: no CUDA device"
print("gpu", torch.cuda.get_device_name(0), "torch", torch.__version__)
for name in ("transformers", "accelerate", "datasets", "tokenizers", "safetensors", "yaml", "rich", "trl"):
    try:
        print(name, getattr(importlib.import_module(name), "__version__", "?"))
    except ImportError:
        print(name, "missing")
EOF
WORK=(--model "$MODEL" --config-only --prompts 8 --micro-prompts 2 --generations 8 --think 128 --answer-tokens 16)
timeout 420 $PY -m nrt bench "${WORK[@]}" --fixed-length --dtype bfloat16 --steps 3 --warmup 2 \
    > "$OUT/bench_nrt_cuda.jsonl.part"
mv "$OUT/bench_nrt_cuda.jsonl.part" "$OUT/bench_nrt_cuda.jsonl"
tail -c 600 "$OUT/bench_nrt_cuda.jsonl"; echo
if $PY -c "import trl" 2>/dev/null; then
    timeout 300 $PY benchmarks/compare_trl.py --rounds 1 --steps 2 --warmup 1 -- "${WORK[@]}" \
        > "$OUT/compare_trl_cuda.jsonl.part"
    mv "$OUT/compare_trl_cuda.jsonl.part" "$OUT/compare_trl_cuda.jsonl"
    tail -n 1 "$OUT/compare_trl_cuda.jsonl"
else
    echo "gpu_check: TRL is not installed here: nrt's side only" | tee -a "$OUT/environment.txt"
fi
