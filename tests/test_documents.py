"""A folder of documents -> passages (common/documents.py, prepare_data.py --source=DIR): every format, the
bad input a real folder holds, passages that fit, stable ids, incremental re-reads, and judgements that
name files scored at the file (max over its passages). Every file is made here."""
import json
import os
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import prepare_data  # noqa: E402
from common import documents, folder  # noqa: E402
from common.data import DataError, load_beir  # noqa: E402
from common.metrics import evaluate_run  # noqa: E402

fpdf = pytest.importorskip("fpdf")

LOREM = ("Retrieval models rank passages for a query. A dense encoder maps text to vectors. BM25 counts words "
         "and weighs rare ones more. Hybrid search mixes the two scores. ")


def make_pdf(path, pages, title="", header="", encrypt=False, text=True):
    """A PDF of `pages` (each a list of paragraphs), a running header and a page-number footer."""
    class Doc(fpdf.FPDF):
        def header(self):
            if header:
                self.set_font("Helvetica", size=8)
                self.cell(0, 5, header, align="C")
                self.ln(8)

        def footer(self):
            self.set_y(-15)
            self.set_font("Helvetica", size=8)
            self.cell(0, 10, f"Page {self.page_no()}", align="C")

    pdf = Doc()
    if title:
        pdf.set_title(title)
    if encrypt:
        pdf.set_encryption(owner_password="owner", user_password="user")
    for paragraphs in pages:
        pdf.add_page()
        if text:
            pdf.set_font("Helvetica", size=11)
            for p in paragraphs:
                pdf.multi_cell(0, 6, p)
                pdf.ln(3)
        else:
            pdf.rect(20, 20, 100, 100, style="F")  # a scan: marks, no text layer
    pdf.output(str(path))
    return path


def make_docx(path, title, paragraphs):
    w = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
    body = "".join(f'<w:p><w:pPr><w:pStyle w:val="{style}"/></w:pPr><w:r><w:t>{text}</w:t></w:r></w:p>'
                   for style, text in [("Heading1", title)] + [("Normal", p) for p in paragraphs])
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("[Content_Types].xml", "<Types/>")
        z.writestr("word/document.xml", f'<w:document xmlns:w="{w}"><w:body>{body}</w:body></w:document>')
    return path


HTML = """<!DOCTYPE html><html><head><title>Widget manual</title><script>track();</script></head><body>
<header><a href="/">Home</a></header><nav><a href="/a">Products</a><a href="/b">Pricing</a></nav>
<div class="cookie-banner">We use cookies to improve everything</div>
<main><h1>Widget manual</h1><p>The widget turns cranks quietly.</p>
<section id="install"><h2>Installing</h2><p>Run the installer as root.</p><pre>make install
make check</pre><table><tr><th>flag</th><th>meaning</th></tr><tr><td>-v</td><td>verbose</td></tr></table></section>
</main><footer>Copyright ACME, all rights reserved</footer></body></html>"""

MARKDOWN = """---
title: Field guide
---
# Field guide

Owls hunt at night. They fly without a sound.

## Feeding

```python
def feed(owl):
    return "mouse"
```

| bird | food |
|------|------|
| owl  | mice |
"""

RST = """Setup notes
===========

Install with :command:`pip`.

Usage
-----

Run it like this::

    tool --fast

Then read the log.
"""


def parse(path):
    return documents.parse(documents.read_bytes(str(path)), str(path))[:3]


def test_every_format(tmp_path):
    pdf = make_pdf(tmp_path / "a.pdf", [["First page talks about owls. " * 5], ["Second page about bats. " * 5],
                                        ["Third page about moths. " * 5]], title="Night animals",
                   header="Journal of Night Studies, Vol. 3")
    fmt, title, blocks = parse(pdf)
    text = " ".join(b.text for b in blocks)
    assert (fmt, title) == ("pdf", "Night animals")
    assert "owls" in text and "moths" in text and [b.page for b in blocks] == [1, 2, 3]
    assert "Journal" not in text and "Page" not in text  # running header and page numbers dropped

    (tmp_path / "w.html").write_text(HTML)
    fmt, title, blocks = parse(tmp_path / "w.html")
    text = " ".join(b.text for b in blocks)
    assert (fmt, title) == ("html", "Widget manual")
    assert "installer" in text and not any(w in text for w in ("Products", "cookies", "Copyright", "track"))
    code = next(b for b in blocks if b.kind == "code")
    assert code.text == "make install\nmake check" and code.anchor == "install"
    assert next(b for b in blocks if b.kind == "table").text == "flag | meaning\n-v | verbose"

    (tmp_path / "g.md").write_text(MARKDOWN)
    fmt, title, blocks = parse(tmp_path / "g.md")
    assert (fmt, title) == ("markdown", "Field guide")
    assert [b.kind for b in blocks] == ["heading", "text", "heading", "code", "table"]
    assert blocks[3].text.startswith("def feed(owl):\n    return")

    (tmp_path / "n.rst").write_text(RST)
    fmt, title, blocks = parse(tmp_path / "n.rst")
    assert (fmt, title) == ("rst", "Setup notes")
    assert "Install with pip." in [b.text for b in blocks]
    assert any(b.kind == "code" and "tool --fast" in b.text for b in blocks)

    make_docx(tmp_path / "d.docx", "Quarterly report", ["Sales rose in spring.", "Costs fell."])
    fmt, title, blocks = parse(tmp_path / "d.docx")
    assert (fmt, title) == ("docx", "Quarterly report") and "Sales rose in spring." in [b.text for b in blocks]

    import gzip
    (tmp_path / "NEWS.gz").write_bytes(gzip.compress(b"Release notes\n\nVersion 2 adds owls.\n"))
    fmt, title, blocks = parse(tmp_path / "NEWS.gz")
    assert (fmt, title, blocks[0].text) == ("text", "Release notes", "Version 2 adds owls.")

    # by content, not only by name: a PDF without an extension, a web page named .txt
    (tmp_path / "noext").write_bytes(pdf.read_bytes())
    (tmp_path / "page.txt").write_text(HTML)
    assert parse(tmp_path / "noext")[0] == "pdf" and parse(tmp_path / "page.txt")[0] == "html"
    # Windows-1252 text is read; UTF-16 with a BOM too
    (tmp_path / "latin.txt").write_bytes("Caf\u00e9 notes\n\nA caf\u00e9 paragraph.\n".encode("cp1252"))
    assert parse(tmp_path / "latin.txt")[2][0].text == "A caf\u00e9 paragraph."
    (tmp_path / "u16.txt").write_bytes("Title\n\nUTF-16 body.\n".encode("utf-16"))
    assert parse(tmp_path / "u16.txt")[2][0].text == "UTF-16 body."


def bad_folder(tmp_path):
    """Good files beside every kind of bad one; {name: the words its skip line says}."""
    root = tmp_path / "docs"
    root.mkdir()
    make_pdf(root / "good.pdf", [[LOREM]], title="Good paper")
    (root / "good.md").write_text("# Good notes\n\n" + LOREM)
    make_pdf(root / "scan.pdf", [[]], text=False)
    make_pdf(root / "locked.pdf", [[LOREM]], encrypt=True)
    (root / "cut.pdf").write_bytes(make_pdf(tmp_path / "whole.pdf", [[LOREM] * 3]).read_bytes()[:700])
    (root / "script.html").write_text("<html><head><script>var a = 1;</script></head><body><script>go()</script>"
                                      "<nav>Home</nav></body></html>")
    (root / "weird.txt").write_bytes(bytes(range(128, 256)) * 4 + b"\x81\x8d\x8f")
    (root / "empty.txt").write_bytes(b"")
    (root / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    (root / "data.json").write_text('{"not": "prose"}')
    (root / "fake.pdf").write_text("not a pdf at all")
    os.symlink(root, root / "loop")  # a folder linking to itself
    os.symlink(root / "gone.txt", root / "dangling.txt")
    return root, {"scan.pdf": "no text layer", "locked.pdf": "encrypted", "cut.pdf": "damaged PDF",
                  "script.html": "no text once scripts", "weird.txt": "unknown text encoding", "empty.txt": "empty file",
                  "fake.pdf": "named .pdf but is not one", "loop": "symlink loop", "dangling.txt": "a broken link"}


def test_bad_files_are_counted_skips_and_nothing_else_is_lost(tmp_path, tiny_model, capsys):
    root, reasons = bad_folder(tmp_path)
    out = tmp_path / "out"
    assert prepare_data.main([f"--source={root}", f"--out={out}", f"--model={tiny_model}", "--passage_tokens=128"]) == 0
    printed = capsys.readouterr().out
    for name, why in reasons.items():
        assert any(line.startswith(f"skipped {name}: ") and why in line for line in printed.splitlines()), (name, printed)
    assert "skipped 2 file(s) that are not documents (binaries, data, scripts): .json 1, .png 1" in printed
    docs = {json.loads(line)["doc"] for line in open(out / "corpus.jsonl")}
    assert docs == {"good.pdf", "good.md"}
    skipped = open(out / "skipped.tsv").read().splitlines()[1:]
    assert {line.split("\t")[0] for line in skipped} == set(reasons) | {"image.png", "data.json"}
    details = json.load(open(out / "prepare.json"))["details"]
    assert details["skipped"] == len(reasons) + 2 and details["read"] == 2


def one_note(tmp_path, tiny_model):
    """(folder, its prepared dataset) of one Markdown note."""
    root, out = tmp_path / "docs", tmp_path / "out"
    root.mkdir()
    (root / "a.md").write_text("# A\n\n" + LOREM)
    prepare_data.main([f"--source={root}", f"--out={out}", f"--model={tiny_model}"])
    return root, out


def test_a_folder_with_nothing_readable_is_one_error_and_the_old_dataset_stays(tmp_path, tiny_model):
    root, out = one_note(tmp_path, tiny_model)
    before = (out / "corpus.jsonl").read_bytes()
    (root / "a.md").write_bytes(b"")
    make_pdf(root / "scan.pdf", [[]], text=False)
    with pytest.raises(DataError, match="no readable document among 2 file"):
        prepare_data.main([f"--source={root}", f"--out={out}", f"--model={tiny_model}"])
    assert (out / "corpus.jsonl").read_bytes() == before


def test_running_heads_of_one_page_pdfs_are_found_across_the_folder(tmp_path, tiny_model):
    root = tmp_path / "abstracts"
    root.mkdir()
    animals = ["owls", "bats", "moths", "bees", "ants", "wasps"]
    for i, animal in enumerate(animals):  # no title in the metadata: the running head would be taken for it
        make_pdf(root / f"a{i}.pdf", [[f"A study of {animal}", LOREM + f"The {animal} hunt at night."]],
                 header="Journal of Night Studies, Vol. 12")
    out = tmp_path / "out"
    prepare_data.main([f"--source={root}", f"--out={out}", f"--model={tiny_model}", "--passage_tokens=400"])
    records = [json.loads(line) for line in open(out / "corpus.jsonl")]
    assert [r["title"] for r in records if r["_id"].endswith("#0")] == [f"A study of {a}" for a in animals]
    assert not any("Journal" in r["text"] for r in records)
    assert json.load(open(out / "prepare.json"))["details"]["running_lines"] == ["journal of night studies, vol. #", "page #"]


def test_a_500_page_pdf_is_read_page_by_page(tmp_path):
    path = make_pdf(tmp_path / "big.pdf", [[f"Page body number {i} talks about topic {i}."] for i in range(500)],
                    title="Big", header="Big Report 2026")
    fmt, title, blocks = parse(path)
    assert len({b.page for b in blocks}) == 500 and not any("Big Report" in b.text for b in blocks)


def test_a_file_that_vanishes_is_a_skip(tmp_path):
    assert folder.read_document(("x.pdf", str(tmp_path / "x.pdf"), None, [])) == {
        "path": "x.pdf", "skip": "vanished while being read"}


def splitter(tiny_model, tokens=160, overlap=60):
    return folder.make_splitter(tiny_model, tokens, overlap)


def test_passages_fit_cut_at_words_and_keep_blocks_whole(tiny_model):
    split = splitter(tiny_model)
    long_word_text = "alpha beta gamma delta epsilon " * 30
    blocks = [documents.Block("heading", "Intro", level=1),
              documents.Block("text", LOREM * 3),
              documents.Block("text", long_word_text.strip()),  # one sentence, longer than a passage
              documents.Block("code", "x = 1\ny = 2"),
              documents.Block("heading", "Next", level=1),
              documents.Block("text", "Short closing words.")]
    passages = split("Doc", blocks)
    budget = split.max_tokens
    words = set((LOREM + long_word_text + " x = 1 y = 2 Short closing words.").split())
    for p in passages:
        assert split.count([f"{p['title']} {p['text']}"])[0] <= budget + 1
        assert set(p["text"].split()) <= words  # never a word cut in two
    assert {p["section"] for p in passages} == {"Intro", "Next"}
    assert passages[-1] == {"title": "Doc › Next", "text": "Short closing words.", "section": "Next", "page": 0,
                            "anchor": ""}
    assert sum("x = 1\ny = 2" in p["text"] for p in passages) == 1  # the code block whole, once
    # overlap: a sentence that ends one passage starts the next of the same paragraph
    firsts = [p["text"].split(". ")[0] for p in passages[1:]]
    assert any(f + "." in prev["text"] for f, prev in zip(firsts, passages) if prev["section"] == "Intro")


def folder_with_questions(tmp_path):
    root = tmp_path / "papers"
    (root / "bio").mkdir(parents=True)
    topics = {"owls": "Owls hunt mice at night with silent feathers.",
              "bats": "Bats find insects by echolocation in the dark.",
              "moths": "Moths are drawn to lamps and fly in spirals.",
              "bees": "Bees dance to tell the hive where flowers are.",
              "ants": "Ants follow scent trails laid by foragers."}
    for name, sentence in topics.items():
        make_pdf(root / "bio" / f"{name}.pdf", [[sentence + " " + LOREM], [LOREM, sentence]], title=name.title())
    (root / "guide.md").write_text("# Guide\n\n## Owls\n\n" + topics["owls"] + "\n\n## Bats\n\n" + topics["bats"])
    questions = [{"question": f"what about {name}?", "files": [f"bio/{name}.pdf"], "split": "test" if i < 2 else "train"}
                 for i, name in enumerate(topics)]
    questions.append({"question": "which page says owls hunt?", "file": "bio/owls.pdf", "page": 2, "split": "train"})
    questions.append({"question": "no file named here"})
    with open(root / "questions.jsonl", "w") as f:
        f.writelines(json.dumps(q) + "\n" for q in questions)
    (root / "questions.txt").write_text("how do bees talk\n\nwhere do ants go\n")
    return root


def test_judgements_name_files_and_score_at_the_file(tmp_path, tiny_model):
    root = folder_with_questions(tmp_path)
    out = tmp_path / "out"
    prepare_data.main([f"--source={root}", f"--out={out}", f"--model={tiny_model}", "--passage_tokens=96"])
    corpus, queries, test = load_beir(str(out), "test")
    _, _, train = load_beir(str(out), "train")
    owls = [p for p, r in corpus.items() if r["doc"] == "bio/owls.pdf"]
    assert len(owls) >= 2 and {corpus[p]["page"] for p in owls} == {1, 2}
    q = next(q for q, row in test.items() if row.units == {"bio/owls.pdf": 1})
    assert set(test[q]) == set(owls)  # every passage of the file, for training and the memory
    # a hit on any passage counts for the file: best passage first -> nDCG 1, whatever the others
    run = {q: {owls[-1]: 3.0, "guide.md#0": 2.0, owls[0]: 1.0}}
    assert evaluate_run({q: test[q]}, run, (10,))[0]["ndcg@10"] == 1.0
    run = {q: {"guide.md#0": 3.0, owls[0]: 2.0, owls[-1]: 1.5}}
    assert evaluate_run({q: test[q]}, run, (1, 10))[0]["ndcg@1"] == 0.0
    # a page judgement holds that page's passages and is scored at the page
    page = next(q for q, row in train.items() if "bio/owls.pdf#page=2" in row.units)
    assert set(train[page]) == {p for p in owls if corpus[p]["page"] == 2}
    page1 = next(p for p in owls if corpus[p]["page"] == 1)
    assert evaluate_run({page: train[page]}, {page: {page1: 2.0}}, (10,))[0]["ndcg@10"] == 0.0
    all_queries = [json.loads(line)["text"] for line in open(out / "queries.jsonl")]
    assert {"no file named here", "how do bees talk", "where do ants go"} <= set(all_queries)
    details = json.load(open(out / "prepare.json"))["details"]
    assert details["questions"]["judged"] == 6 and details["questions"]["unjudged"] == 3


def test_a_judgement_naming_a_missing_file_is_an_error_with_its_line(tmp_path, tiny_model):
    root = tmp_path / "docs"
    root.mkdir()
    (root / "a.md").write_text("# A\n\n" + LOREM)
    (root / "questions.jsonl").write_text(json.dumps({"question": "q?", "files": ["a.md"]}) + "\n"
                                          + json.dumps({"question": "r?", "files": ["nope.pdf"]}) + "\n")
    with pytest.raises(DataError, match=r"questions.jsonl:2: 'nope.pdf' is not a file under"):
        prepare_data.main([f"--source={root}", f"--out={tmp_path / 'out'}", f"--model={tiny_model}"])


def read_ids(out):
    return {json.loads(line)["_id"]: json.loads(line)["text"] for line in open(out / "corpus.jsonl")}


def test_a_grown_folder_is_read_again_only_where_it_changed(tmp_path, tiny_model, monkeypatch, capsys):
    root = folder_with_questions(tmp_path)
    (root / "old.md").write_text("# Old\n\nNotes nobody reads.")
    out = tmp_path / "out"
    args = [f"--source={root}", f"--out={out}", f"--model={tiny_model}", "--passage_tokens=96"]
    prepare_data.main(args)
    first, stamp = read_ids(out), os.path.getmtime(out / "prepare.json")
    parsed = []
    real_parse = documents.parse
    monkeypatch.setattr(documents, "parse", lambda data, name, drop: parsed.append(name) or real_parse(data, name, drop))
    capsys.readouterr()
    prepare_data.main(args)  # nothing changed: nothing parsed, nothing written
    assert parsed == [] and "unchanged since the last run" in capsys.readouterr().out
    assert os.path.getmtime(out / "prepare.json") == stamp
    (root / "new.md").write_text("# New\n\nFresh notes about wasps.")
    (root / "guide.md").write_text("# Guide\n\n## Owls\n\nOwls changed their minds.")
    os.remove(root / "old.md")
    prepare_data.main(args)
    printed = capsys.readouterr().out
    assert sorted(parsed) == ["guide.md", "new.md"]
    assert "1 added, 1 changed, 1 removed, 5 unchanged" in printed
    second = read_ids(out)
    kept = {i: t for i, t in first.items() if not i.startswith(("guide.md", "old.md"))}
    assert all(second[i] == t for i, t in kept.items())  # unchanged files: the same ids, the same passages
    assert "new.md#0" in second and not any(i.startswith("old.md") for i in second)


def test_a_large_folder_is_read_by_a_pool_the_same_as_in_process(tmp_path, tiny_model, monkeypatch):
    root = tmp_path / "many"
    root.mkdir()
    for i in range(80):
        (root / f"n{i:03d}.md").write_text(f"# Note {i}\n\nNote {i} says {LOREM}")
    monkeypatch.setattr(folder, "PARALLEL_FROM", 20)  # four files a worker: a pool of the cores
    prepare_data.main([f"--source={root}", f"--out={tmp_path / 'pool'}", f"--model={tiny_model}"])
    monkeypatch.setattr(folder, "PARALLEL_FROM", 10_000)
    prepare_data.main([f"--source={root}", f"--out={tmp_path / 'serial'}", f"--model={tiny_model}"])
    assert (tmp_path / "pool" / "corpus.jsonl").read_bytes() == (tmp_path / "serial" / "corpus.jsonl").read_bytes()


def test_one_line_sections_share_a_passage_with_their_headings(tiny_model):
    split = splitter(tiny_model, tokens=200)
    blocks = [b for i in range(8) for b in (documents.Block("heading", f"item {i}", level=2),
                                            documents.Block("text", "Source."))]
    passages = split("Api", blocks)
    assert 1 < len(passages) < 8
    assert passages[0]["section"] == "item 0" and passages[0]["text"].startswith("Source.\nitem 1\nSource.")
    for p in passages:
        assert split.count([f"{p['title']} {p['text']}"])[0] <= split.max_tokens
    assert sum(p["text"].count("Source.") for p in passages) == 8  # nothing lost


def test_a_folder_without_questions_exports_with_parity_on_its_passages(tmp_path, tiny_model):
    import types

    import export_onnx
    _, out = one_note(tmp_path, tiny_model)
    assert not (out / "qrels").exists() or not os.listdir(out / "qrels")
    queries, passages = export_onnx.parity_inputs(types.SimpleNamespace(data=str(out), parity_texts=8))
    assert queries == export_onnx.BUILTIN_QUERIES and passages[0].startswith("A Retrieval models")
