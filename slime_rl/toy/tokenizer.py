"""Character-level HF tokenizer (one token per character), built with the `tokenizers` library.

Owns the toy vocabulary: four special tokens, then printable ASCII and newline. Encoding prepends
`<bos>`; decoding concatenates characters. It does not know about tasks or models.
"""

from __future__ import annotations

import string

from tokenizers import Tokenizer, decoders, models, processors
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)  # ids 0, 1, 2, 3
CHARACTERS = "\n" + "".join(c for c in string.printable if c.isprintable())  # printable ASCII incl. space


def make_char_tokenizer() -> PreTrainedTokenizerFast:
    """A fast tokenizer with ids 0-3 = pad, bos, eos, unk and one id per character of `CHARACTERS`."""
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for char in CHARACTERS:
        vocab.setdefault(char, len(vocab))
    # BPE with no merges splits the whole input into single characters and maps each through `vocab`.
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    core.add_special_tokens(list(SPECIAL_TOKENS))
    core.decoder = decoders.Fuse()
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK, padding_side="left"
    )
