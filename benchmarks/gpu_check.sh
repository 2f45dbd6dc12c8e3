#!/usr/bin/env bash
# The GPU check: what to run the day a CUDA machine is lent.
#
#   benchmarks/gpu_check.sh              # on a CUDA machine: everything below
#   benchmarks/gpu_check.sh --dry-run    # anywhere: the CPU part only, naming what it skips
#
# On a CUDA machine it runs
#   1. the CUDA tests (tests/test_gpu.py, marker `gpu`): bf16 training, the
#      compiled model against eager, the sampler's cached = uncached greedy
#      decoding, and a one-GPU torchrun;
#   2. the default test suite, where `device = "auto"` now means CUDA;
#   3. the GPU speedrun: `gpu-speedrun-147` on tinyshakespeare through
#      benchmarks/speedrun.py (the whole command timed, the whole val split
#      scored; nanoGPT: 1.4697 in about 3 minutes on one A100; goal: 1.47 in
#      15 s or less on one H100), two seeds.
# Logs and a summary go to $OUT (default benchmarks/results/gpu-check).
#
# Without CUDA (or with --dry-run) it checks what a CPU can: the preset
# parses and stops at its target, the commands' --help, the CUDA tests are
# collected, and a few steps of the preset's model shape train on the CPU
# (batch 2, eager, float32, one thread), in a temporary directory. Each GPU step is
# named as SKIP. The exit status is 1 if any check failed, else 0.
#
# Environment: PYTHON (default: python3), OUT, FOLIO_TINYSHAKESPEARE (the
# speedrun's input.txt; benchmarks/speedrun.py also looks beside the repo).

set -u
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
OUT="${OUT:-$ROOT/benchmarks/results/gpu-check}"
PRESET="gpu-speedrun-147"
DRY=0
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY=1 ;;
        -h|--help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu_check.sh: error: unknown argument $arg (use --dry-run or --help)" >&2; exit 2 ;;
    esac
done

PASSED=(); FAILED=(); SKIPPED=()
pass() { PASSED+=("$1"); echo "PASS  $1"; }
fail() { FAILED+=("$1"); echo "FAIL  $1"; }
skip() { SKIPPED+=("$1"); echo "SKIP  $1"; }
# check NAME CMD...: run CMD quietly (its output in $LOGS/NAME.log), PASS or FAIL by its status
check() {
    local name="$1"; shift
    local log="$LOGS/$(echo "$name" | tr -c 'A-Za-z0-9._-' '_').log"
    local t0; t0=$(date +%s.%N)
    if "$@" >"$log" 2>&1; then
        pass "$name ($(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f s", b - a }'))"
    else
        fail "$name (log: $log)"; tail -n 20 "$log"
    fi
}

# The machine, and whether CUDA is there (the last line: 1 or 0), in one interpreter.
MACHINE="$("$PY" - <<'EOF'
import platform, torch
from folio.runtime import cpu_info
info = cpu_info()
print(f"torch {torch.__version__}, python {platform.python_version()}, CPU {info.name}, "
      f"{info.physical_cores} cores, flags {' '.join(info.notable_flags())}")
for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
    p = torch.cuda.get_device_properties(i)
    print(f"cuda:{i} {p.name}, {p.total_memory / 2**30:.0f} GiB, bf16 {torch.cuda.is_bf16_supported()}")
print(int(torch.cuda.is_available()))
EOF
)" || { echo "gpu_check.sh: error: $PY cannot import torch and folio" >&2; exit 2; }
CUDA="${MACHINE##*$'\n'}"
if [ "$DRY" = 1 ] || [ "$CUDA" != 1 ]; then
    MODE="dry run (CPU)"
    LOGS="$(mktemp -d "${TMPDIR:-/tmp}/folio-gpu-check.XXXXXX")"
    trap 'rm -rf "$LOGS"' EXIT
else
    MODE="CUDA"
    LOGS="$OUT"
    mkdir -p "$LOGS"
fi
echo "gpu_check.sh: $MODE, $(date -u +%Y-%m-%dT%H:%M:%SZ), load $(uptime | sed 's/.*load average: //')"
echo "${MACHINE%$'\n'*}"

# ------------------------------------------------------------ anywhere
check "preset $PRESET parses and stops at val 1.47" "$PY" -c "
from folio.config.run import build_run_config
run = build_run_config('$PRESET', [])
t, m = run.train, run.model
assert t.target_val_loss == 1.47 and t.max_time > 0, (t.target_val_loss, t.max_time)
assert t.device == 'cuda' and t.dtype == 'bfloat16' and t.compile, t
print(m.n_layer, m.n_head, m.n_embd, m.block_size, t.batch_size, t.max_iters)
"
for cmd in "train" "eval" "sample" "bench train" "bench sample"; do
    # shellcheck disable=SC2086  # $cmd is two words for bench
    check "folio $cmd --help" "$PY" -m folio $cmd --help
done
check "speedrun.py knows $PRESET's target" "$PY" -c "
import runpy
assert runpy.run_path('benchmarks/speedrun.py')['TARGETS']['$PRESET'] == 1.47"
check "CUDA tests are collected (tests/test_gpu.py)" "$PY" -m pytest -q -p no:cacheprovider \
    --collect-only -m gpu tests/test_gpu.py

# ------------------------------------------------------------ CUDA only
if [ "$MODE" = "CUDA" ]; then
    nvidia-smi >"$LOGS/nvidia-smi.txt" 2>&1 || true
    check "CUDA tests: bf16, compiled, sampler exactness, one-GPU torchrun" \
        "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py
    check "default test suite with CUDA present" "$PY" -m pytest -q -p no:cacheprovider
    check "GPU speedrun $PRESET on tinyshakespeare (2 seeds)" "$PY" benchmarks/speedrun.py \
        --preset "$PRESET" --seeds 1337 1338 --results "$LOGS"
    [ -f "$LOGS/$PRESET-summary.md" ] && cat "$LOGS/$PRESET-summary.md"
else
    # Two steps of the preset's model shape on the CPU: eager, float32, batch 2, one thread.
    "$PY" - "$LOGS/corpus.txt" <<'EOF'
import random, sys
rng = random.Random(0)
words = "to be or not that is the question whether tis nobler in mind suffer".split()
lines = (" ".join(rng.choice(words) for _ in range(12)) for _ in range(2000))
open(sys.argv[1], "w", encoding="utf-8").write("\n".join(lines) + "\n")
EOF
    check "folio prepare (a small corpus)" "$PY" -m folio prepare "$LOGS/corpus.txt" \
        --out "$LOGS/data"
    check "$PRESET's model shape trains 2 steps on the CPU" "$PY" -m folio train \
        --data "$LOGS/data" --out "$LOGS/run" --preset "$PRESET" --device cpu --dtype float32 \
        --train.compile false --batch-size 2 --max-iters 2 --eval-interval 2 --threads 1 \
        --train.eval_iters 1 --train.max_time 0 --train.save_checkpoints false --quiet --json
    grep -h '^{' "$LOGS"/*trains_2_steps*.log 2>/dev/null
    skip "CUDA tests: bf16, compiled, sampler exactness, one-GPU torchrun (no CUDA device)"
    skip "default test suite with CUDA present (no CUDA device)"
    skip "GPU speedrun $PRESET on tinyshakespeare (no CUDA device)"
fi

echo
echo "gpu_check.sh ($MODE): ${#PASSED[@]} passed, ${#FAILED[@]} failed, ${#SKIPPED[@]} skipped"
for s in "${SKIPPED[@]}"; do echo "  skipped: $s"; done
for f in "${FAILED[@]}"; do echo "  failed: $f"; done
[ "${#FAILED[@]}" = 0 ]
