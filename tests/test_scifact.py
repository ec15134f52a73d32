"""Integration on the real BEIR SciFact (../shared/data/scifact); skipped where it is absent."""
import json
import os

import pytest

import evaluate
import prepare_data

SCIFACT = os.environ.get("SCIFACT_DIR", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                                                         "scifact"))
pytestmark = pytest.mark.skipif(not os.path.isfile(os.path.join(SCIFACT, "corpus.jsonl")),
                                reason=f"BEIR SciFact not found at {SCIFACT} (set SCIFACT_DIR)")


@pytest.fixture(scope="module")
def scifact(tmp_path_factory):
    out = tmp_path_factory.mktemp("scifact") / "scifact"
    prepare_data.main([f"--source={SCIFACT}", f"--out={out}"])
    return out


def test_prepare_keeps_test_and_carves_val(scifact):
    counts = {s: len({line.split("\t")[0] for line in (scifact / "qrels" / f"{s}.tsv").read_text().splitlines()[1:]})
              for s in ("train", "val", "test")}
    assert counts == {"train": 728, "val": 81, "test": 300}


def test_bm25_reaches_the_published_number(scifact, tmp_path):
    # Anserini BM25: 0.665 (BEIR paper), 0.679 (pyserini); ours measured 0.677 with settings chosen
    # on train. Plain lowercase words without stopwords and stemming would fall to ~0.65.
    evaluate.main([f"--data={scifact}", "--retrievers=bm25", f"--out={tmp_path}"])
    metrics = json.loads((tmp_path / "metrics.json").read_text())["results"]["bm25"]["metrics"]
    assert metrics["ndcg@10"] >= 0.67
    assert metrics["recall@100"] >= 0.90
