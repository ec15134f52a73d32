"""Training queries made from documents alone, for a corpus that comes without questions.

Four ways to turn one passage into (query, positive) pairs; prepare_data.py --pseudo_queries uses them:
- title: the document's own title is the query and its text, without the title, the positive (the
  title-body pairs of Contriever's and E5's pre-training; a paper title reads more like a claim or a
  question than any sentence cut from the abstract does).
- ict: the inverse cloze task (Lee et al. 2019). One sentence of the passage is the query. With
  probability `remove_prob` it is cut out of the passage, so the pair cannot be matched on copied words
  alone; the rest of the time it stays, so the model still learns that overlap is evidence.
- crop: independent cropping (Izacard et al. 2022, Contriever). Two random spans of the passage, each
  `min_ratio`..`max_ratio` of its words: one is the query, the other the positive.
- QueryGenerator: doc2query with a seq2seq model (GPL, Wang et al. 2022). The positive is the passage.

The spans keep the passage's own characters (newlines and indentation in code), so a positive looks
like the documents the model will index.
"""
import re

# A sentence: up to ., ! or ? before whitespace, or to the end of its line (code, lists, titles).
SENTENCE = re.compile(r"\S[^\n]*?(?:[.!?](?=\s|$)|$)", re.M)
WORD = re.compile(r"\S+")
METHODS = ("title", "ict", "crop", "generate")


def sentence_spans(text):
    """(start, end) of each sentence of text, in order."""
    return [m.span() for m in SENTENCE.finditer(text)]


def title_query(title, text, min_words=3):
    """(title, text) when the title has min_words words and the text is not empty, else None."""
    title = " ".join(title.split())
    return (title, text) if len(title.split()) >= min_words and text.strip() else None


def ict(text, rng, remove_prob=0.9, min_words=4):
    """(query, positive) from one passage, or None when it has fewer than two sentences or no
    sentence of min_words words."""
    spans = sentence_spans(text)
    candidates = [i for i, (s, e) in enumerate(spans) if len(text[s:e].split()) >= min_words]
    if len(spans) < 2 or not candidates:
        return None
    start, end = spans[rng.choice(candidates)]
    query = text[start:end]
    if rng.random() < remove_prob:
        left, right = text[:start].rstrip(" \t"), text[end:].lstrip(" \t")
        same_line = left and right and not left.endswith("\n") and not right.startswith("\n")
        positive = (left + (" " if same_line else "") + right).strip("\n").rstrip()  # keeps code's indentation
    else:
        positive = text
    return " ".join(query.split()), positive


def crop(text, rng, min_ratio=0.1, max_ratio=0.5, min_words=8):
    """(query span, positive span) of one passage, or None when it has fewer than min_words words."""
    words = [m.span() for m in WORD.finditer(text)]
    n = len(words)
    if n < min_words:
        return None

    def span():
        length = max(1, round(rng.uniform(min_ratio, max_ratio) * n))
        first = rng.randrange(n - length + 1)
        return text[words[first][0]:words[first + length - 1][1]]

    return " ".join(span().split()), span()


class QueryGenerator:
    """doc2query with a Hugging Face seq2seq model (T5 and the like): sampled queries per passage."""

    def __init__(self, name, device, max_input_length=256, max_query_length=64, top_p=0.95):
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        from common.models import load_pretrained, resolve_model

        path = resolve_model(name)
        self.model = load_pretrained(name, AutoModelForSeq2SeqLM, path).to(device).eval()
        self.tokenizer = load_pretrained(name, AutoTokenizer, path)
        self.device, self.max_input_length = device, max_input_length
        self.max_query_length, self.top_p = max_query_length, top_p

    def generate(self, texts, per_text, seed, batch_size=32):
        """[[query, ...] per text]: per_text sampled queries each, empty ones dropped; seeded."""
        import torch  # here, so that prepare_data.py without a generator does not load torch

        torch.manual_seed(seed)
        out = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(texts[start:start + batch_size], padding=True, truncation=True,
                                   max_length=self.max_input_length, return_tensors="pt").to(self.device)
            with torch.inference_mode():  # no token_type_ids: seq2seq models refuse the ones BERT tokenizers add
                ids = self.model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                          do_sample=True, top_p=self.top_p, max_new_tokens=self.max_query_length,
                                          num_return_sequences=per_text)
            decoded = [" ".join(q.split()) for q in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]
            out += [[q for q in decoded[i:i + per_text] if q] for i in range(0, len(decoded), per_text)]
        return out
