#!/usr/bin/env bash
# Run here, before a device call: puts in .gpu/ (git-ignored) what the GPU machine lacks. Its
# image has torch, triton, transformers and pytest, but not `gguf` nor the bundled SmolLM2
# package, whose 94 MB file is over the call's 64 MiB. Dummy models only need its tokenizer,
# so a tiny random llama with the same tokenizer stands in for it (see check.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
rm -rf .gpu && mkdir -p .gpu
"$PY" -m pip download --quiet --no-deps --only-binary=:all: -d .gpu "gguf==$("$PY" -c 'import gguf.metadata, importlib.metadata as m; print(m.version("gguf"))')"
"$PY" - <<'PYTHON'
from pathlib import Path
from conduit.engine import resolve_model_path
from tests.engine.tiny_llama import write_tiny_llama
write_tiny_llama(Path(".gpu/tokenizer.gguf"), resolve_model_path("smollm2"), hidden=32, layers=1,
                 heads=2, kv_heads=1, ffn=64)
PYTHON
du -sh .gpu
