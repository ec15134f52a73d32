#!/usr/bin/env bash
# Pack what a lent GPU machine needs into .devcarry/ (git-ignored; the device tool carries at most
# 64 MiB and the machine has no network): wheels its Python lacks, all-MiniLM-L6-v2 in fp16 (half
# the bytes; restored to fp32 there, where zero-shot SciFact nDCG@10 came out at 0.6451 as on the
# CPU), the prepared SciFact directory, and a setup script. Then, from the device tool:
#     run(command="source .devcarry/setup.sh && <commands>", carry=[".devcarry"])
# with --model=/tmp/minilm on the device. The device had Python 3.12, torch 2.11, transformers 5.17.
set -euo pipefail
cd "$(dirname "$0")/.."
out=.devcarry
data=${DATA_DIR:-data/scifact}
rm -rf "$out" && mkdir -p "$out/whl"
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qx "/$out/" "$exclude" 2>/dev/null || echo "/$out/" >> "$exclude"
.venv/bin/pip download -q --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 -d "$out/whl" \
    faiss-cpu==1.15.1 rank-bm25==0.2.2 PyStemmer==3.1.0
tmp=$(mktemp -d)
.venv/bin/python - "$tmp/minilm" <<'EOF'
import sys
import torch
from common.models import BiEncoder
enc = BiEncoder.from_pretrained("all-MiniLM-L6-v2")
enc.model.to(torch.float16)
enc.save(sys.argv[1])
EOF
tar -C "$tmp" -cJf "$out/minilm16.tar.xz" minilm
tar -cJf "$out/data.tar.xz" "$data"
rm -rf "$tmp"
cat > "$out/setup.sh" <<'EOF'
# On the device: source .devcarry/setup.sh
python -m pip install -q --no-index --no-deps .devcarry/whl/*.whl
tar -C /tmp -xJf .devcarry/minilm16.tar.xz
tar -xJf .devcarry/data.tar.xz
python -c "
import torch; from transformers import AutoModel
m = AutoModel.from_pretrained('/tmp/minilm', dtype=torch.float32); m.save_pretrained('/tmp/minilm')"
# no TOKENIZERS_PARALLELISM=false: on one thread the tokenizer held a teacher's H100 to ~1,100
# pairs/s, 84% of the time tokenizing (2026-11-23); no script forks after tokenizing
export HF_HUB_OFFLINE=1
EOF
du -sh "$out" "$out"/*
