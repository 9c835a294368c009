#!/bin/sh
# resnet_finetune.sh - transfer learning with a residual net and BatchNorm.
#
#   1. pretrain examples/resnet_small.txt on Fashion-MNIST classes 0-4
#      (T-shirt, trouser, pullover, dress, coat) and save its weights;
#   2. fine-tune it on classes 5-9 (sandal, shirt, sneaker, bag, ankle boot)
#      with the trunk frozen (conv1, bn1 and the block layer1.0), so layer2.0
#      and fc train; the frozen BatchNorms run in eval mode, on the running
#      statistics of the pretraining (torchvision's FrozenBatchNorm2d);
#   3. for comparison, train the same net from scratch on 5-9 for as many steps;
#   4. evaluate both on the test images of classes 5-9 and print a table.
#
# Step 2 in PyTorch, with the weights converted by examples/torch_state.py:
#     model.load_state_dict(torch.load("pre.pt"))
#     for name, p in model.named_parameters():
#         if name.split(".")[0] in ("conv1", "bn1", "layer1"): p.requires_grad = False
#     model.train(); model.bn1.eval(); model.layer1.apply(lambda m: m.eval())
#
# It is examples/transfer.sh with this net (MODEL), these frozen layers
# (FREEZE), 200 steps and twice as many to pretrain, and a progress line every
# 100 steps; it takes the same NAME=VALUE settings (FROST, DATA, STEPS,
# PRETRAIN_STEPS, BATCH, LR, THREADS, OUT, ...; see the top of transfer.sh).
#
# Usage: sh examples/resnet_finetune.sh [NAME=VALUE]...  (or set them in the environment)
set -eu

here=$(cd "$(dirname "$0")" && pwd)
export MODEL="$here/resnet_small.txt" FREEZE='conv1 bn1 layer1*' STEPS="${STEPS:-200}" \
    PRETRAIN_FACTOR=2 LOG_EVERY="${LOG_EVERY:-100}"
exec sh "$here/transfer.sh" "$@"
