#!/usr/bin/env bash
# Check a training strategy end to end on the tiny offline model: fit, validate the checkpoint, start a
# new run from it with `lora.init_adapter`, resume it with `fit --ckpt_path`. The validation metrics
# of all three evaluations must be equal (the checkpoint holds exactly the trained LoRA weights).
#
#   bash scripts/check_strategy.sh                                   # default strategy, CPU or GPU
#   bash scripts/check_strategy.sh --trainer.accelerator gpu --trainer.strategy \
#       lightning.pytorch.strategies.DeepSpeedStrategy --trainer.strategy.stage 2 \
#       --trainer.strategy.exclude_frozen_parameters true
#   bash scripts/check_strategy.sh --trainer.accelerator gpu --trainer.strategy \
#       lightning.pytorch.strategies.FSDPStrategy --trainer.strategy.state_dict_type full
#
# Arguments are passed to every `cir-lightning` call; WORK (default: a new temporary folder) holds the
# runs. Exit status 0 means every step ran and the metrics agree. Checked on one H100 for DeepSpeed
# ZeRO-2 and FSDP (2026-11-23).
set -euo pipefail
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$WORK"
PY=${PYTHON:-python}
export HF_HUB_OFFLINE=1 PYTHONWARNINGS=ignore
here=$(cd "$(dirname "$0")/.." && pwd)
common=(--config "$here/tests/conf/tiny.yaml" --model.backbone.init_args.model_name_or_path "$WORK/tiny"
        --data.init_args.root "$WORK/data" --trainer.devices 1 --trainer.num_sanity_val_steps 0
        --trainer.logger CSVLogger "$@")
# cli SUBCOMMAND NAME ARGS...: run `cir-lightning SUBCOMMAND ARGS...`, its output in $WORK/NAME.log
cli() { local sub=$1 name=$2; shift 2; echo "+ cir-lightning $sub ($name)" >&2
        "$PY" -m cir_lightning "$sub" "$@" >"$WORK/$name.log" 2>&1 || { tail -20 "$WORK/$name.log"; exit 1; }; }

# one whole epoch of 4 steps (its checkpoint is an epoch end), then a second epoch when resumed
cli fit fit "${common[@]}" --trainer.max_steps -1 --trainer.default_root_dir "$WORK/fit" --trainer.logger.save_dir "$WORK/fit"
ckpt="$WORK/fit/lightning_logs/version_0/checkpoints/last.ckpt"
cli validate validate "${common[@]}" --trainer.default_root_dir "$WORK/val" --trainer.logger.save_dir "$WORK/val" \
    --ckpt_path "$ckpt"
cli validate init "${common[@]}" --trainer.default_root_dir "$WORK/init" --trainer.logger.save_dir "$WORK/init" \
    --model.backbone.init_args.lora.init_adapter "$ckpt"
cli fit resume "${common[@]}" --trainer.default_root_dir "$WORK/resume" --trainer.logger.save_dir "$WORK/resume" \
    --trainer.max_epochs 2 --trainer.max_steps -1 --ckpt_path "$ckpt"

"$PY" - "$WORK" <<'EOF'
import csv, json, sys
from pathlib import Path

work = Path(sys.argv[1])
rows = list(csv.DictReader((work / "fit/lightning_logs/version_0/metrics.csv").open()))
fit = {k[4:]: float(v) for k, v in [r for r in rows if r.get("val/Recall@1")][-1].items() if k.startswith("val/") and v}
ok = True
for run in ("val", "init"):
    (path,) = (work / run).glob("**/results-validate.json")
    got = json.loads(path.read_text())["metrics"][""]
    same = set(got) == set(fit) and all(abs(got[k] - fit[k]) < 1e-6 for k in got)
    print(f"{run}: metrics {'equal' if same else 'DIFFER'} to the end of fit: {got}")
    ok &= same
import torch

(last,) = (work / "resume").glob("**/checkpoints/last.ckpt")
steps = torch.load(last, map_location="cpu", weights_only=True)["global_step"] if last.is_file() else None
if steps is None:  # DeepSpeed writes a folder: the step is in its checkpoint's client state
    (states,) = last.glob("checkpoint/mp_rank_00_model_states.pt")
    steps = torch.load(states, map_location="cpu", weights_only=True)["global_step"]
print(f"resume: continued from step 4 to step {steps}")
ok &= steps == 8
print("PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
EOF
