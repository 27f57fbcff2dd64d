"""Serving an NRT model with vLLM: a reasoning parser (`--reasoning-parser nrt`) and a logits processor
that ends a trace the way training does, both registered by nrt's vLLM plugin (nrt.serving.vllm_plugin)."""
