"""Do directories saved by BiEncoder.save() load in sentence-transformers with the same embeddings?

sentence-transformers is a bench-only peer, never a project dependency; install it aside:
    .venv/bin/pip install --target /tmp/stpkg --no-deps sentence-transformers scikit-learn scipy
    PYTHONPATH=/tmp/stpkg .venv/bin/python bench/st_interop.py
    PYTHONPATH=.bench-st .venv/bin/python bench/st_interop.py runs/lora-r8/encoder/best   # (`make bench-st-setup`) and trained models
"""
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sentence_transformers import SentenceTransformer, __version__  # noqa: E402

from common import lora  # noqa: E402
from common.models import BiEncoder, principal_axes  # noqa: E402
from conftest import build_tiny_model  # noqa: E402

TEXTS = ["def read_lines(path): return open(path).read().splitlines()", "Return the lines of a file.", "short"]


def main():
    with tempfile.TemporaryDirectory() as tmp:
        cases = [("all-MiniLM-L6-v2", "all-MiniLM-L6-v2", {}),
                 ("tiny, cls pooling", build_tiny_model(os.path.join(tmp, "a")), {"pooling": "cls"}),
                 ("tiny, max pooling, no normalise", build_tiny_model(os.path.join(tmp, "b")),
                  {"pooling": "max", "normalize": False})]
        cases.append(("all-MiniLM-L6-v2 + LoRA r=8, saved merged", "all-MiniLM-L6-v2", {"lora": 8}))
        cases.append(("all-MiniLM-L6-v2 rotated onto principal axes (a Dense module)", "all-MiniLM-L6-v2",
                      {"rotate": True}))
        cases += [(f"{path} (a trained best/)", path, {}) for path in sys.argv[1:]]
        for i, (name, source, overrides) in enumerate(cases):
            r, rotate = overrides.pop("lora", 0), overrides.pop("rotate", False)
            ours = BiEncoder.from_pretrained(source, **overrides)
            if rotate:  # Matryoshka's start (train_encoder.py matryoshka_rotation)
                ours.rotate(principal_axes(ours.encode(TEXTS * 4)))
            if r:  # an adapter as training leaves it: B moved off zero, so the merge has something to fold in
                ours.add_lora(r, 2.0 * r, 0.0, ["query", "key", "value", "dense"])
                torch.manual_seed(0)
                for layer in lora.layers(ours.model).values():
                    torch.nn.init.normal_(layer.lora_B, std=0.02)
            saved = ours.save(os.path.join(tmp, f"saved{i}"))
            theirs = SentenceTransformer(saved, device="cpu")
            diff = np.abs(ours.encode(TEXTS) - theirs.encode(TEXTS, convert_to_numpy=True)).max()
            print(f"sentence-transformers {__version__}, {name}: max abs difference {diff:.2e}")
            assert diff < 1e-5


if __name__ == "__main__":
    main()
