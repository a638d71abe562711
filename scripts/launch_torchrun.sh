#!/usr/bin/env bash
# Multi-node training with torchrun: run this script once on every node.
#
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0.cluster MASTER_PORT=29500 GPUS_PER_NODE=8 \
#       bash scripts/launch_torchrun.sh fit --config configs/cirr_train.yaml --data.init_args.root /data/cirr
#
# torchrun starts GPUS_PER_NODE processes here and sets RANK / LOCAL_RANK / WORLD_SIZE / MASTER_*;
# Lightning reads them (its torchelastic environment), so the Trainer only has to agree on the shape:
# --trainer.num_nodes NNODES --trainer.devices GPUS_PER_NODE. Every node must see the same data root,
# model folder and output folder (shared file system), and MASTER_ADDR must be reachable from all nodes.
# The run is identical to one node with NNODES * GPUS_PER_NODE processes (tested on loopback with
# 2 nodes x 1 CPU process against 1 node x 2 processes: same weights, same validation metrics).
set -euo pipefail
: "${NNODES:?set NNODES}" "${NODE_RANK:?set NODE_RANK}" "${MASTER_ADDR:?set MASTER_ADDR}"
MASTER_PORT=${MASTER_PORT:-29500}
GPUS_PER_NODE=${GPUS_PER_NODE:-$(python -c 'import torch; print(max(1, torch.cuda.device_count()))')}
exec torchrun --nnodes "$NNODES" --nproc-per-node "$GPUS_PER_NODE" --node-rank "$NODE_RANK" \
    --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT" \
    -m cir_lightning "$@" --trainer.num_nodes "$NNODES" --trainer.devices "$GPUS_PER_NODE" --trainer.strategy ddp
