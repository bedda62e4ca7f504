#!/usr/bin/env bash
# GPU check (issue 13). Never in CI: needs one CUDA GPU, at most 8 minutes (each part has its own timeout).
#   (a) StableSAM/SAM and StableSAM/SGD full-step time ratios: ResNet-20 batch 128 (CIFAR shapes) and
#       ViT-S/32 batch 64, random data, fp32 and bf16
#   (b) one StableSAM step under torch.cuda.set_sync_debug_mode('error') (no host sync)
#   (c) one `stablesam-train --quick` epoch with --amp bf16 and with --amp fp16 on generated CIFAR-10 files
# Usage: bash benchmarks/gpu_check.sh            (from anywhere; it runs from the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'gpu_check.sh: no CUDA GPU')"
start=$(date +%s)

timeout 270 python benchmarks/gpu_check.py

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python -c "import sys; from stablesam.data import write_fake_cifar; write_fake_cifar(sys.argv[1], n_train=256, n_test=256)" "$tmp/data"
for amp in bf16 fp16; do
  echo "(c) stablesam-train --quick --amp $amp"
  timeout 90 python -c 'import sys; from stablesam.cli import main; sys.exit(main())' \
    --quick --dataset cifar10 --data-root "$tmp/data" --no-download --model resnet20 --optimizer stablesam \
    --amp "$amp" --device cuda --no-progress --out "$tmp/run-$amp"
  python -c "import json, math, sys; m = [json.loads(l) for l in open(sys.argv[1])][-1]; \
print(f\"    train_loss {m['train_loss']:.4f}, renorm_factor {m['renorm_factor']:.4f}, finite: {math.isfinite(m['train_loss'])}\"); \
sys.exit(0 if math.isfinite(m['train_loss']) else 1)" "$tmp/run-$amp/metrics.jsonl"
done
echo "gpu_check.sh: done in $(( $(date +%s) - start )) s"
