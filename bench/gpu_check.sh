#!/usr/bin/env bash
# What a GPU machine can check that CI cannot (CI has no GPU): the test suite with its models on the
# GPU, in half precision as the service runs there by default; and the default adapter's quality runs
# on the GPU in half and in full precision, to set beside the published CPU runs (docs/bench/gpu.md).
#
# Usage, on a machine with CUDA and the project's dependencies:  bench/gpu_check.sh OUT_DIR
# Each part has its own time limit and log, so one that fails or hangs still leaves the others' results.
set -uo pipefail
out=${1:?usage: bench/gpu_check.sh OUT_DIR}
mkdir -p "$out"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1

python3 - > "$out/env.txt" 2>&1 <<'EOF'
import faiss, open_clip, torch
print("torch", torch.__version__, "CUDA", torch.version.cuda, "on", torch.cuda.get_device_name())
print("faiss", faiss.__version__, "(GPU build)" if hasattr(faiss, "StandardGpuResources") else "(CPU build)")
print("open_clip", open_clip.__version__)
EOF

# Seed 0 of the published runs, same shifts and sizes: zero-shot and the candidates of `auto`.
for spec in composition fine_grained; do
    for precision in fp16 fp32; do
        timeout 240 python3 -m bench.quality --spec "$spec" --methods zero-shot adapter adapter+blocks adapter+blocks-lr3e-3 --seeds 0 \
            --sizes 1000 --device cuda --precision "$precision" --out "$out/$spec-$precision" \
            > "$out/$spec-$precision.log" 2>&1 &
    done
done

# The suite's fast part (its slow part needs schemathesis and a browser); PostgreSQL tests skip without a server.
# SIGINT at the limit: pytest still writes the results it has.
PAS_TEST_DEVICE=cuda timeout -s INT 300 python3 -m pytest -q -m "not slow" -n 12 -p no:cacheprovider \
    tests/adapters tests/service --junitxml="$out/junit.xml" > "$out/pytest.log" 2>&1
echo "pytest exit code $?" >> "$out/pytest.log"
wait
