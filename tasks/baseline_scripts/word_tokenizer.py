"""A whitespace word-level tokenizer built from the training text, saved as a Hugging Face
fast tokenizer so AutoTokenizer loads it with the model."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPECIALS = ["[PAD]", "[UNK]", "<s>", "</s>"]


def build(texts: Iterable[str], max_vocab: int = 8000) -> PreTrainedTokenizerFast:
    counts = Counter(w for t in texts for w in t.split())
    vocab = {s: i for i, s in enumerate(SPECIALS)}
    for w, _ in counts.most_common(max_vocab - len(SPECIALS)):
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                   bos_token="<s>", eos_token="</s>")
