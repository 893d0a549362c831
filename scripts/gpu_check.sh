#!/usr/bin/env bash
# First-GPU check for segbench: install, kill-and-resume two architectures, speed, and DDP on 2 GPUs.
#
# Usage: scripts/gpu_check.sh [OUT_DIR]   (default gpu_check_out/; about 10 minutes on one GPU)
# Environment: TORCH_INDEX_URL (default https://download.pytorch.org/whl/cu124), PYTHON (default python3).
# Everything it prints goes to OUT_DIR/check.log too; figures and run folders stay in OUT_DIR.
# Never run by this project's CI (no GPU there): the first run on a GPU is what it is for.
set -euo pipefail

OUT="${1:-gpu_check_out}"
PYTHON="${PYTHON:-python3}"
TORCH_INDEX_URL="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cu124}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
exec > >(tee -a "$OUT/check.log") 2>&1

step() { printf '\n== %s (%s)\n' "$1" "$(date +%H:%M:%S)"; }
fail() { printf 'FAILED: %s\n' "$1"; exit 1; }

step "install"
if [[ ! -x "$ROOT/.venv/bin/python" ]]; then
    "$PYTHON" -m venv "$ROOT/.venv"
fi
VENV_PY="$ROOT/.venv/bin/python"
"$VENV_PY" -m pip install --quiet --upgrade pip
"$VENV_PY" -c "import torch" 2>/dev/null || "$VENV_PY" -m pip install --quiet torch --index-url "$TORCH_INDEX_URL"
"$VENV_PY" -m pip install --quiet -e "$ROOT"
SEGBENCH=("$VENV_PY" -m segbench)
nvidia-smi | tee "$OUT/nvidia-smi.txt"
"$VENV_PY" - <<'PY' | tee "$OUT/environment.txt"
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "gpus", torch.cuda.device_count())
for i in range(torch.cuda.device_count()):
    print(i, torch.cuda.get_device_name(i), "capability", torch.cuda.get_device_capability(i))
assert torch.cuda.is_available(), "CUDA is not available to torch: check the driver and TORCH_INDEX_URL"
PY
GPUS="$("$VENV_PY" -c 'import torch; print(torch.cuda.device_count())')"

# A short run: 60 iterations of 96x96 crops, validation and checkpoints every 20.
COMMON=(--data brain-mri --set train.iterations=60 --set train.val_interval=20 --set train.checkpoint_interval=20
        --set train.log_interval=10 --set train.batch_size=8 --set train.device=cuda --quiet)

kill_and_resume() {  # ARCH OPTIONS: start, kill -9 after the first checkpoint, run the same command again
    local arch="$1" options="$2" run="$OUT/runs/$1"
    step "kill and resume: $arch"
    rm -rf "$run"
    "${SEGBENCH[@]}" train --arch "$arch" --out "$run" --set "model.options=$options" "${COMMON[@]}" \
        > "$OUT/$arch-first.log" 2>&1 &
    local pid=$! waited=0
    until [[ -f "$run/last.pt" ]] || ! kill -0 "$pid" 2>/dev/null; do
        sleep 1
        waited=$((waited + 1))
        (( waited < 300 )) || { kill -9 "$pid"; fail "$arch wrote no checkpoint in 300 s (see $arch-first.log)"; }
    done
    kill -9 "$pid" 2>/dev/null || fail "$arch finished before it could be killed (see $arch-first.log)"
    wait "$pid" 2>/dev/null || true
    "${SEGBENCH[@]}" train --arch "$arch" --out "$run" --set "model.options=$options" "${COMMON[@]}" \
        > "$OUT/$arch-resume.log" 2>&1 || fail "$arch did not resume (see $arch-resume.log)"
    "$VENV_PY" - "$run" <<'PY' || fail "$arch: metrics.json says it did not resume"
import json, sys
m = json.load(open(f"{sys.argv[1]}/metrics.json"))
print({k: m[k] for k in ("arch", "device", "precision", "resumed_from", "best_value", "train_images_per_s", "data_time_s", "train_time_s")})
assert m["resumed_from"] and m["device"].startswith("cuda"), m
PY
    "${SEGBENCH[@]}" eval "$run" > "$OUT/$arch-eval.log" 2>&1 || fail "$arch: segbench eval (see $arch-eval.log)"
}

kill_and_resume unet "{base_width: 16}"
kill_and_resume deeplabv3plus "{encoder: resnet18, output_stride: 16}"

step "speed (against the peer libraries where installed)"
"${SEGBENCH[@]}" speed --device cuda --out "$OUT/speed.json" > "$OUT/speed.log" 2>&1 || fail "segbench speed (see speed.log)"
tail -n 40 "$OUT/speed.log"

if (( GPUS >= 2 )); then
    step "DDP: 2 processes"
    "$ROOT/.venv/bin/torchrun" --standalone --nproc_per_node=2 -m segbench train --arch unet --out "$OUT/runs/ddp" \
        --set "model.options={base_width: 16}" "${COMMON[@]}" > "$OUT/ddp.log" 2>&1 || fail "DDP run (see ddp.log)"
    "$VENV_PY" -c "import json; m = json.load(open('$OUT/runs/ddp/metrics.json')); print(m['world_size'], m['best_value']); assert m['world_size'] == 2"
else
    step "DDP skipped: $GPUS GPU visible (needs 2)"
fi

step "done: everything is in $OUT"
