#!/usr/bin/env bash
# First-GPU check for segbench, for a borrowed machine that has its own PyTorch and perhaps no network: install
# next to that PyTorch, kill-and-resume two architectures, eval, speed, and DDP on 2 GPUs.
#
# Usage: [PYTHON=python3] [WHEELHOUSE=wheelhouse] scripts/gpu_check.sh [--install-only] [OUT_DIR]
#   PYTHON      a Python whose torch sees CUDA [default: the first python3 or python on PATH whose torch does].
#               Its packages are used as they are: torch is never installed or changed.
#   WHEELHOUSE  a folder of wheels (`make wheelhouse`) for what that Python lacks; pip reaches no index
#   ONLINE=1    let pip fetch what is missing from its index instead
#   GPU_VENV    where segbench and the missing packages go: a venv that sees PYTHON's packages behind its
#               own [default: .venv-gpu]
#   --install-only  stop after installing (needs no GPU; tests/test_offline_install.py runs it)
# OUT_DIR [default gpu_check_out/] gets every log, results.csv, speed.json and the run folders; check.log holds
# all it prints and ends with the summary. Each step has a time limit: the whole run takes minutes.
# Never run by this project's CI (no GPU there): the first run on a GPU is what it is for.
set -euo pipefail

INSTALL_ONLY=0
if [[ "${1:-}" == "--install-only" ]]; then
    INSTALL_ONLY=1
    shift
fi
OUT="${1:-gpu_check_out}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GPU_VENV="${GPU_VENV:-$ROOT/.venv-gpu}"
ARCHS="unet,deeplabv3plus"
SPEED_ARCHS="${SPEED_ARCHS:-unet,deeplabv3plus,segformer,upernet}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
exec > >(tee -a "$OUT/check.log") 2>&1
rm -f "$OUT/steps.tsv"

STEP=""
STEP_START=$SECONDS
# One line per finished step (name, ok/FAILED/skipped, seconds) for the summary.
finish_step() {
    [[ -n "$STEP" ]] && printf '%s\t%s\t%s\n' "$STEP" "$1" "$((SECONDS - STEP_START))" >> "$OUT/steps.tsv"
    STEP=""
}
step() {
    finish_step ok
    STEP="$1"
    STEP_START=$SECONDS
    printf '\n== %s (%s)\n' "$2" "$(date +%H:%M:%S)"
}
fail() { printf 'FAILED: %s\n' "$1"; finish_step FAILED; exit 1; }
summary() {
    local status=$?
    if (( status )); then finish_step FAILED; else finish_step ok; fi
    "${VENV_PY:-${PYTHON:-python3}}" "$ROOT/scripts/gpu_check_summary.py" "$OUT" || true
}

# The first python3 or python on PATH whose torch sees CUDA; what each has, when none does.
find_python() {
    local candidate seen=""
    for candidate in $(type -ap python3 python); do
        [[ " $seen " == *" $candidate "* ]] && continue
        seen+=" $candidate"
        if "$candidate" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
        printf '  %s: %s\n' "$candidate" "$("$candidate" -c 'import torch; print("torch", torch.__version__, "built for CUDA", torch.version.cuda, "sees no GPU")' 2>/dev/null || echo "no torch")" >&2
    done
    return 1
}

# A venv that sees PYTHON's packages behind its own, through a .pth: `--system-site-packages` would show
# those of the interpreter PYTHON was made from instead, when PYTHON is itself a venv.
make_venv() {
    local base
    base="$("$PYTHON" -c 'import sys; print(sys.executable)')"
    if [[ ! -x "$GPU_VENV/bin/python" || "$(cat "$GPU_VENV/segbench-base-python" 2>/dev/null)" != "$base" ]]; then
        [[ ! -e "$GPU_VENV" || -f "$GPU_VENV/pyvenv.cfg" ]] || fail "GPU_VENV=$GPU_VENV exists and is not a venv"
        rm -rf "$GPU_VENV"
        "$PYTHON" -m venv --without-pip "$GPU_VENV"  # pip is PYTHON's own, seen through the .pth
        echo "$base" > "$GPU_VENV/segbench-base-python"
    fi
    VENV_PY="$GPU_VENV/bin/python"
    "$PYTHON" - "$("$VENV_PY" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" <<'PY'
import pathlib, site, sys
folders = site.getsitepackages() + ([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])
# addsitedir, not a bare path: the .pth files in those folders (editable installs, ...) count too.
lines = [f"import site; site.addsitedir({folder!r})" for folder in folders if pathlib.Path(folder).is_dir()]
(pathlib.Path(sys.argv[1]) / "gpu_check_base_python.pth").write_text("\n".join(lines) + "\n")
PY
}

step install "install: segbench next to the machine's PyTorch"
if [[ -z "${PYTHON:-}" ]]; then
    PYTHON="$(find_python)" || fail "no python3 or python on PATH has a torch that sees CUDA (above); give PYTHON=/path/to/python"
fi
echo "PYTHON=$PYTHON, venv $GPU_VENV"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || fail "segbench needs Python 3.11 or later (PYTHON=$PYTHON)"
make_venv
install_args=(install --extra onnx)
[[ -n "${WHEELHOUSE:-}" ]] && install_args+=(--wheelhouse "$WHEELHOUSE")
[[ "${ONLINE:-0}" == 1 ]] && install_args+=(--online)
"$VENV_PY" "$ROOT/scripts/offline_deps.py" "${install_args[@]}" || fail "install (the list above says what is missing)"
"$VENV_PY" -c 'import segbench, torch; print("segbench from", segbench.__file__, "| torch", torch.__version__, "from", torch.__file__)'
if (( INSTALL_ONLY )); then
    finish_step ok
    exit 0
fi
rm -rf "$OUT/environment.json" "$OUT/review" "$OUT/speed.json" "$OUT/speed.log" "$OUT/runs"  # a previous run's
trap summary EXIT
SEGBENCH=("$VENV_PY" -m segbench)

step environment "environment"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || echo "nvidia-smi failed (see nvidia-smi.txt)"
head -n 20 "$OUT/nvidia-smi.txt"
"$VENV_PY" - "$OUT/environment.json" <<'PY' || fail "CUDA is not available to torch: check the driver and PYTHON"
import json, platform, sys, torch
gpus = [{"name": torch.cuda.get_device_name(i), "capability": ".".join(map(str, torch.cuda.get_device_capability(i)))}
        for i in range(torch.cuda.device_count())]
info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(), "gpus": gpus}
json.dump(info, open(sys.argv[1], "w"), indent=1)
print(info)
assert torch.cuda.is_available()
PY
GPUS="$("$VENV_PY" -c 'import torch; print(torch.cuda.device_count())')"

# A short review of two architectures: 60 iterations at 96x96, validation and checkpoints every 20.
REVIEW=(run brain-mri --archs "$ARCHS" --iterations 60 --out "$OUT/review" --no-speed --no-progress
        --set train.device=cuda --set train.val_interval=20 --set train.checkpoint_interval=20 --set train.log_interval=10)

step review "segbench run: its training worker killed after the first checkpoint, then the same command again"
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
timeout 900 "${SEGBENCH[@]}" "${REVIEW[@]}" > "$OUT/review-resume.log" 2>&1 || fail "the review did not finish in 15 min (see review-resume.log)"
"$VENV_PY" - "$OUT/review" <<'PY' || fail "the killed run did not resume from its checkpoint"
import glob, json, sys
rows = [json.load(open(path)) for path in sorted(glob.glob(f"{sys.argv[1]}/*/metrics.json"))]
assert len(rows) == 2 and all(m["device"].startswith("cuda") for m in rows), rows
assert any(m["resumed_from"] for m in rows), "no run says it resumed"
PY
cp "$OUT/review/report/results.csv" "$OUT/results.csv"

step eval "segbench eval of both runs"
for run in "$OUT"/review/*/; do
    [[ -f "$run/metrics.json" ]] || continue
    timeout 300 "${SEGBENCH[@]}" eval "$run" > "$OUT/eval-$(basename "$run").log" 2>&1 || fail "segbench eval $run (see its log)"
done

step speed "speed of $SPEED_ARCHS (against the peer libraries where installed)"
timeout 900 "${SEGBENCH[@]}" speed --device cuda --profile quick --archs "$SPEED_ARCHS" --batch 8 --pipeline --breakdown \
    --engine onnx --out "$OUT/speed.json" > "$OUT/speed.log" 2>&1 || fail "segbench speed (see speed.log)"

if (( GPUS >= 2 )); then
    step ddp "DDP: 2 processes"
    timeout 600 "$VENV_PY" -m torch.distributed.run --standalone --nproc_per_node=2 -m segbench train --arch unet \
        --data brain-mri --out "$OUT/runs/ddp" --set "model.options={base_width: 16}" --set train.iterations=60 \
        --set train.val_interval=20 --set train.batch_size=8 --set train.device=cuda --quiet \
        > "$OUT/ddp.log" 2>&1 || fail "DDP run (see ddp.log)"
    "$VENV_PY" -c "import json, sys; sys.exit(json.load(open('$OUT/runs/ddp/metrics.json'))['world_size'] != 2)" \
        || fail "the DDP run did not record world_size 2"
else
    finish_step ok
    printf 'ddp\tskipped (%s GPU)\t0\n' "$GPUS" >> "$OUT/steps.tsv"
fi
