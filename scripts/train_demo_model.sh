#!/usr/bin/env bash
# Reproduce the committed demo model (vltseg_core/pretrained/) in one command, on a CPU:
#   scripts/train_demo_model.sh [CAMVID_ROOT] [WORK_DIR]      (defaults: ../shared/data/camvid runs/demo)
# 1. `vltseg train demo_camvid` (feature cache of the frozen backbone, then the neck + head), resumed exactly from
#    WORK_DIR when an earlier run was interrupted (the cached views are kept too), so it can span sessions;
# 2. the float16 neck + head written over vltseg_core/pretrained/demo_head.safetensors;
# 3. `vltseg eval` of that committed model on CamVid val (the only time val is used) into WORK_DIR/eval_val;
# 4. its domain-shift references on CamVid val (vltseg_core/pretrained/demo_domain_shift.json).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
camvid="$(realpath "${1:-$root/../shared/data/camvid}")"
work="${2:-$root/runs/demo}"
bin="$root/.venv/bin"  # ./run.sh setup makes it; elsewhere the vltseg on PATH
[ -x "$bin/vltseg" ] || bin="$(dirname "$(command -v vltseg)")"
resume=()
[ -f "$work/checkpoints/latest.txt" ] && resume=(--resume)
"$bin/vltseg" train demo_camvid --work-dir "$work" --set "data.train.root=$camvid" --set "data.val.root=$camvid" \
    "${resume[@]}"
"$bin/python" -c "import sys; from vltseg_core.pretrained import export_head; print(export_head(sys.argv[1]))" \
    "$work/final.safetensors"
"$bin/vltseg" eval --model demo --data "camvid:$camvid:val" --out "$work/eval_val"
"$bin/vltseg" domain-shift --model demo --data "camvid:$camvid:val"
