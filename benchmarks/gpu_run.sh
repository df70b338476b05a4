#!/usr/bin/env bash
# All the GPU work in one script (about 3-5 minutes on one H200; never over GPU_RUN_BUDGET, 420 s):
# env, gpu_check.py on DiT-XL/2 (bf16), the published settings (fp32 + TF32, batch 1), erase-class end to end on CUDA
# on the tiny stand-ins, kill -9 mid-erasure + --resume latest, pytest -m cuda, summary.md.
#
# On any machine with an NVIDIA GPU, from the repository root (docs/gpu/README.md):
#   pip install -e ".[test]" && bash benchmarks/gpu_run.sh OUT
# Without network there: run `bash benchmarks/gpu_wheels.sh` on a machine with network, copy .whl/ along, then
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && PYTHONPATH=/tmp/site bash benchmarks/gpu_run.sh OUT
# A second try of some steps only: append e.g. --only e2e,resume (and GPU_RUN_BUDGET=240 before bash).
#
# Usage: benchmarks/gpu_run.sh OUT [--cpu-tiny] [--only STEP,...]
#   steps, in order: env check published e2e resume pytest (summary always runs); each has its own time cap and a
#   failed or timed-out step does not stop the next. --cpu-tiny: every step on CPU with tiny sizes (a dry run).
# Writes to OUT (8 files): summary.md results.json log.txt env.txt gpu_check.txt e2e.json resume.json pytest.txt
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT= TINY= ONLY=
while (($#)); do
    case $1 in
        --cpu-tiny) TINY=1 ;;
        --only) ONLY=$2; shift ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) OUT=$1 ;;
    esac
    shift
done
[ -n "$OUT" ] || { echo "usage: $0 OUT [--cpu-tiny] [--only STEP,...]" >&2; exit 2; }
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
(cd "$OUT" && rm -f summary.md results.json log.txt env.txt gpu_check.txt e2e.json resume.json pytest.txt)
WORK=${GPU_RUN_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/dualerase-gpu-run.XXXXXX")}
mkdir -p "$WORK" && rm -f "$WORK/steps.tsv"
PY=${PYTHON:-python3}
export OUT WORK PY TINY ROOT
export PYTHONPATH="$ROOT/src:$ROOT:$ROOT/tests${PYTHONPATH:+:$PYTHONPATH}" DUALERASE_HOME="$WORK/home" HF_HUB_OFFLINE=1 \
    PYTHONUNBUFFERED=1
if [ -n "$TINY" ]; then
    export CUDA_VISIBLE_DEVICES=  # a CPU dry run even on a GPU machine
    BUDGET=${GPU_RUN_BUDGET:-1500}
    declare -A CAP=([env]=60 [check]=180 [published]=120 [e2e]=400 [resume]=400 [pytest]=180 [summary]=60)
else
    BUDGET=${GPU_RUN_BUDGET:-420}
    declare -A CAP=([env]=45 [check]=190 [published]=75 [e2e]=120 [resume]=100 [pytest]=75 [summary]=20)
fi
cd "$ROOT" || exit 2
exec > >(tee -a "$OUT/log.txt") 2>&1
TEE=$!

step_env() {
    { date -u; uname -a; nproc; nvidia-smi || echo "nvidia-smi: not available"
      "$PY" - <<'EOF'
import importlib, os, sys
import torch
print("python", sys.version.split()[0], sys.executable)
print("torch", torch.__version__, "| CUDA", torch.version.cuda, "| cuDNN", torch.backends.cudnn.version(),
      "| cuda available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device", p.name, "| capability", f"{p.major}.{p.minor}", "| SMs", p.multi_processor_count,
          "| memory GiB", round(p.total_memory / 2**30, 1))
for name in ("diffusers", "timm", "torch_fidelity", "accelerate", "huggingface_hub", "safetensors", "numpy",
             "torchvision", "scipy", "PIL", "yaml", "sklearn", "matplotlib", "pytest", "hypothesis"):
    try:
        m = importlib.import_module(name)
        print(f"{name} {getattr(m, '__version__', '?')} {os.path.dirname(m.__file__)}")
    except Exception as e:
        print(f"{name} MISSING ({type(e).__name__}: {e})")
sys.exit(0 if torch.cuda.is_available() or os.environ.get("TINY") else 1)
EOF
    } > "$OUT/env.txt" 2>&1
    local rc=$?; cat "$OUT/env.txt"; return $rc
}
step_check() {
    echo "## bf16 (ours)" > "$OUT/gpu_check.txt"
    "$PY" benchmarks/gpu_check.py ${TINY:+--cpu-tiny} --vs-ditpipeline 3 --vs-bare-loop 3 --json "$WORK/check-bf16.json" \
        >> "$OUT/gpu_check.txt"
}
step_published() {  # the published DiT code: fp32 weights and activations, TF32 matmuls, erase batch 1
    echo -e "\n## published settings: fp32 + TF32, batch 1" >> "$OUT/gpu_check.txt"
    "$PY" benchmarks/gpu_check.py ${TINY:+--cpu-tiny} --dtype fp32-tf32 --batch-size 1 --grad-ckpt off --no-vae \
        --json "$WORK/check-tf32.json" >> "$OUT/gpu_check.txt"
}
step_e2e() { "$PY" benchmarks/gpu_steps.py e2e --work "$WORK" --out "$OUT" ${TINY:+--tiny}; }
step_resume() { "$PY" benchmarks/gpu_steps.py resume --work "$WORK" --out "$OUT" ${TINY:+--tiny}; }
step_pytest() {
    "$PY" -m pytest -q -m cuda -rs -p no:cacheprovider > "$OUT/pytest.txt" 2>&1
    local rc=$?; tail -5 "$OUT/pytest.txt"
    if [ $rc = 5 ]; then echo "no tests carry the cuda marker"; return 0; fi
    return $rc
}
step_summary() { "$PY" benchmarks/gpu_steps.py summary --work "$WORK" --out "$OUT"; }
export -f step_env step_check step_published step_e2e step_resume step_pytest step_summary

run_step() {  # run_step NAME: step_NAME under min(its cap, what the budget leaves), status and seconds to steps.tsv
    local name=$1 cap=${CAP[$1]} status t0=$SECONDS rc
    if [ -n "$ONLY" ] && [ "$name" != summary ] && [[ ",$ONLY," != *",$name,"* ]]; then
        printf '%s\tnot run (--only)\t-\n' "$name" >> "$WORK/steps.tsv"; return
    fi
    local left=$((BUDGET - SECONDS))
    [ "$name" = summary ] || left=$((left - CAP[summary]))
    if ((left < 10)); then
        echo "== $name: skipped, the time budget (${BUDGET}s) is spent"
        printf '%s\tskipped (budget spent)\t-\n' "$name" >> "$WORK/steps.tsv"; return
    fi
    ((cap > left)) && cap=$left
    echo "== $name: start at ${SECONDS}s, cap ${cap}s"
    timeout -k 5 "$cap" bash -c "step_$name"
    rc=$?
    case $rc in 0) status=ok ;; 124|137) status="TIMEOUT (cap ${cap}s)" ;; *) status="FAILED (rc $rc)" ;; esac
    echo "== $name: $status in $((SECONDS - t0))s"
    printf '%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - t0))" >> "$WORK/steps.tsv"
}

echo "gpu_run.sh: out $OUT, work $WORK, ${TINY:+CPU TINY DRY RUN, }budget ${BUDGET}s, $(date -u)"
for s in env check published e2e resume pytest; do run_step "$s"; done
run_step summary
if ! [ -s "$OUT/summary.md" ]; then  # the summary step failed: at least the step table
    { echo "# GPU run summary (summary step failed; see log.txt)"; cat "$WORK/steps.tsv"; } > "$OUT/summary.md"
    cat "$WORK"/check-*.json 2>/dev/null
fi
echo "gpu_run.sh: done in ${SECONDS}s"
grep -qE $'\t(FAILED|TIMEOUT|skipped)' "$WORK/steps.tsv" && failed=1 || failed=0
[ -n "${GPU_RUN_KEEP:-}" ] || [ -n "${GPU_RUN_WORK:-}" ] || rm -rf "$WORK"
exec >&- 2>&-
wait "$TEE"  # log.txt complete before the call returns
exit $failed
