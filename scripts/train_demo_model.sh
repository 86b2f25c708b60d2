#!/usr/bin/env bash
# Reproduce the committed demo model (vltseg_core/pretrained/) in one command, on a CPU:
#   scripts/train_demo_model.sh [CAMVID_ROOT] [WORK_DIR]      (defaults: ../shared/data/camvid runs/demo)
# 1. `vltseg train demo_camvid` into WORK_DIR/linear: the neck + head on the frozen backbone's cached features;
# 2. `vltseg train demo_camvid_lora` into WORK_DIR/lora: LoRA adapters on every backbone block, with the neck + head,
#    starting from stage 1 (init_from); each stage resumes exactly when an earlier run was interrupted (cached
#    views are kept too), so the script can span sessions;
# 3. the float16 neck + head + low-rank backbone update written over vltseg_core/pretrained/demo_head.safetensors;
# 4. `vltseg eval` of that committed model on CamVid val (the only time val is used) into WORK_DIR/eval_val;
# 5. its domain-shift references on CamVid val (vltseg_core/pretrained/demo_domain_shift.json).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
camvid="$(realpath "${1:-$root/../shared/data/camvid}")"
work="$(realpath -m "${2:-$root/runs/demo}")"
bin="$root/.venv/bin"  # ./run.sh setup makes it; elsewhere the vltseg on PATH
[ -x "$bin/vltseg" ] || bin="$(dirname "$(command -v vltseg)")"
stage() {  # stage EXPERIMENT WORK_SUBDIR [--set ...]
  local resume=()
  [ -f "$work/$2/checkpoints/latest.txt" ] && resume=(--resume)
  "$bin/vltseg" train "$1" --work-dir "$work/$2" --set "data.train.root=$camvid" --set "data.val.root=$camvid" \
      "${@:3}" "${resume[@]}"
}
stage demo_camvid linear
stage demo_camvid_lora lora --set "init_from=$work/linear/final.safetensors"
"$bin/python" -c "import sys; from vltseg_core.pretrained import export_head; print(export_head(sys.argv[1]))" \
    "$work/lora/final.safetensors"
"$bin/vltseg" eval --model demo --data "camvid:$camvid:val" --out "$work/eval_val"
"$bin/vltseg" domain-shift --model demo --data "camvid:$camvid:val"
