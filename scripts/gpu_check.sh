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

# A short review of two architectures: 60 iterations at 96x96, validation and checkpoints every 20.
ARCHS="unet,deeplabv3plus"
REVIEW=(run brain-mri --archs "$ARCHS" --iterations 60 --out "$OUT/review" --no-speed --no-progress
        --set train.device=cuda --set train.val_interval=20 --set train.checkpoint_interval=20 --set train.log_interval=10)

step "segbench run: its training worker killed after the first checkpoint, then the same command again"
rm -rf "$OUT/review"
"${SEGBENCH[@]}" "${REVIEW[@]}" > "$OUT/review-first.log" 2>&1 &
pid=$!
waited=0
until compgen -G "$OUT/review/*/last.pt" > /dev/null; do
    kill -0 "$pid" 2>/dev/null || fail "the review ended before writing a checkpoint (see review-first.log)"
    sleep 1
    waited=$((waited + 1))
    (( waited < 300 )) || { kill "$pid"; fail "no checkpoint in 300 s (see review-first.log)"; }
done
# As a lost node would: the sweep records the run as failed and goes on with the next architecture.
worker="$(pgrep -P "$pid" | head -n 1)" || fail "no training worker to kill (see review-first.log)"
kill -9 "$worker"
wait "$pid" 2>/dev/null || true
"${SEGBENCH[@]}" "${REVIEW[@]}" > "$OUT/review-resume.log" 2>&1 || fail "the review did not finish (see review-resume.log)"
"$VENV_PY" - "$OUT/review" <<'PY' || fail "the killed run did not resume from its checkpoint"
import glob, json, sys
rows = []
for path in sorted(glob.glob(f"{sys.argv[1]}/*/metrics.json")):
    m = json.load(open(path))
    rows.append(m)
    print({k: m.get(k) for k in ("arch", "device", "precision", "resumed_from", "best_value", "train_images_per_s",
                                 "data_time_s", "train_time_s", "math")})
assert len(rows) == 2 and all(m["device"].startswith("cuda") for m in rows), rows
assert any(m["resumed_from"] for m in rows), "no run says it resumed"
PY
cp "$OUT/review/report/results.csv" "$OUT/results.csv"
for run in "$OUT"/review/*/; do
    [[ -f "$run/metrics.json" ]] || continue
    "${SEGBENCH[@]}" eval "$run" > "$OUT/eval-$(basename "$run").log" 2>&1 || fail "segbench eval $run (see its log)"
done

step "speed (against the peer libraries where installed)"
"${SEGBENCH[@]}" speed --device cuda --profile quick --batch 8 --pipeline --breakdown --engine onnx --out "$OUT/speed.json" > "$OUT/speed.log" 2>&1 || fail "segbench speed (see speed.log)"
tail -n 40 "$OUT/speed.log"

if (( GPUS >= 2 )); then
    step "DDP: 2 processes"
    "$ROOT/.venv/bin/torchrun" --standalone --nproc_per_node=2 -m segbench train --arch unet --data brain-mri \
        --out "$OUT/runs/ddp" --set "model.options={base_width: 16}" --set train.iterations=60 \
        --set train.val_interval=20 --set train.batch_size=8 --set train.device=cuda --quiet \
        > "$OUT/ddp.log" 2>&1 || fail "DDP run (see ddp.log)"
    "$VENV_PY" -c "import json; m = json.load(open('$OUT/runs/ddp/metrics.json')); print(m['world_size'], m['best_value']); assert m['world_size'] == 2"
else
    step "DDP skipped: $GPUS GPU visible (needs 2)"
fi

step "done: everything is in $OUT"
