"""Detokenizers: undo the tokenization that some corpora ship with, so every corpus reaches our tokenizer as
ordinary running text.

WikiText, the Penn Treebank and the One Billion Word benchmark were released pre-tokenized (spaces around
punctuation, " @-@ " for an in-word hyphen, "<unk>" for rare words). A byte-level BPE trained on such text
learns those artefacts, and generative perplexity measured on it is not comparable with other corpora. These
are the detokenizers of the MDLM / SEDD code bases (which take them from Megatron-LM and the LM1B release),
rule for rule, with one fix noted in ``wikitext``. Each rule is a plain string or regex substitution, applied
in the order written, because later rules assume the earlier ones ran. ``preprocess.corpus`` applies them
to the hub corpora that need them; from Python: ``detokenize.get("wikitext")("the 1st @-@ year student")``.
"""

from __future__ import annotations

import re
from collections.abc import Callable


def wikitext(text: str) -> str:
    """WikiText-2 / WikiText-103 (raw) -> running text.

    - contractions: "s '" -> "s'", "' 90s" -> "'90s"
    - number separators: " @-@ " -> "-", " @,@ " -> ",", " @.@ " -> "."
    - punctuation: " X " -> "X " for X in : ; . ! ? ,
    - brackets and quotes: "( a b )" -> "(a b)", likewise [ ], { }, " ", ' '
    - headings: "= = = =" -> "====", "= = =" -> "===", "= =" -> "=="
    - " ° " -> "°", spaces around newlines dropped, " N " -> " 1 ", " 's" -> "'s"

    The contraction rule for "' 90s" is written in MDLM/Megatron as ``re.sub(r"/' [0-9]/", r"/'[0-9]/", s)``,
    a JavaScript-style pattern with literal slashes that never matches real text; here it does what it says.
    """
    # contractions
    text = text.replace("s '", "s'")
    text = re.sub(r"' ([0-9])", r"'\1", text)
    # number separators
    text = text.replace(" @-@ ", "-")
    text = text.replace(" @,@ ", ",")
    text = text.replace(" @.@ ", ".")
    # punctuation
    text = text.replace(" : ", ": ")
    text = text.replace(" ; ", "; ")
    text = text.replace(" . ", ". ")
    text = text.replace(" ! ", "! ")
    text = text.replace(" ? ", "? ")
    text = text.replace(" , ", ", ")
    # brackets and quotes: drop the spaces just inside each pair
    text = re.sub(r"\(\s*([^\)]*?)\s*\)", r"(\1)", text)
    text = re.sub(r"\[\s*([^\]]*?)\s*\]", r"[\1]", text)
    text = re.sub(r"{\s*([^}]*?)\s*}", r"{\1}", text)
    text = re.sub(r"\"\s*([^\"]*?)\s*\"", r'"\1"', text)
    text = re.sub(r"'\s*([^']*?)\s*'", r"'\1'", text)
    # headings, longest first so "= = = =" is not eaten as two "= ="
    text = text.replace("= = = =", "====")
    text = text.replace("= = =", "===")
    text = text.replace("= =", "==")
    # miscellaneous
    text = text.replace(" " + chr(176) + " ", chr(176))
    text = text.replace(" \n", "\n")
    text = text.replace("\n ", "\n")
    text = text.replace(" N ", " 1 ")
    text = text.replace(" 's", "'s")
    return text


def ptb(text: str) -> str:
    """Penn Treebank (ptb_text_only) -> running text.

    " 's" -> "'s", "s ' " -> "s' ", " n't" -> "n't", " \\n " -> "\\n", "\\/" -> "/", the number placeholder
    " N " -> " 1 " (repeated, because adjacent placeholders share a space), "$ 1" -> "$1", "# 1" -> "#1",
    and "<unk>" -> "?".
    """
    text = text.replace(" 's", "'s")
    text = text.replace("s ' ", "s' ")
    text = text.replace(" n't", "n't")
    text = text.replace(" \n ", "\n")
    text = text.replace("\\/", "/")
    # "N N N": each replace consumes the space the next match needs, so repeat until nothing changes.
    while " N " in text:
        text = text.replace(" N ", " 1 ")
    text = text.replace("$ 1", "$1")
    text = text.replace("# 1", "#1")
    text = text.replace("<unk>", "?")
    return text


def lm1b(text: str) -> str:
    """One Billion Word benchmark -> running text.

    URLs ("http : / / " -> "http://"), clitics (" 'll" -> "'ll"), sentence punctuation attached to the word
    before it (" word . " -> " word. ", also at the end), " , " " : " " ; " " / ", quotes and brackets closed
    up ('" a b "' -> '"a b"'), and currency signs joined to their amount ("$ 5" -> "$5").
    """
    text = text.replace("http : / / ", "http://")
    text = text.replace("https : / / ", "https://")
    text = re.sub(r" '(\w+)", r"'\1", text)
    text = re.sub(r" (\w+) \. ", r" \1. ", text)
    text = re.sub(r" (\w+) \.$", r" \1.", text)
    text = text.replace(" ? ", "? ")
    text = re.sub(r" \?$", "?", text)
    text = text.replace(" ! ", "! ")
    text = re.sub(r" \!$", "!", text)
    text = text.replace(" , ", ", ")
    text = text.replace(" : ", ": ")
    text = text.replace(" ; ", "; ")
    text = text.replace(" / ", "/")
    text = re.sub(r"\" ([^\"]+) \"", r'"\1"', text)
    text = re.sub(r"' ([^']+) '", r"'\1'", text)
    text = re.sub(r"\( ([^\(\)]+) \)", r"(\1)", text)
    text = re.sub(r"\[ ([^\[\]]+) \]", r"[\1]", text)
    text = text.replace("$ ", "$")
    text = text.replace("£ ", "£")
    return text


def lambada(text: str) -> str:
    """LAMBADA (OpenAI release) -> running text: curly double quotes become straight ones, ends stripped.

    MDLM also prepends a newline, which marks a passage start inside its concatenated evaluation stream; our
    passages are separate documents, so that newline is left out.
    """
    text = text.replace("\u201c", '"')
    text = text.replace("\u201d", '"')
    return text.strip()


DETOKENIZERS: dict[str, Callable[[str], str]] = {
    "wikitext": wikitext,
    "ptb": ptb,
    "lm1b": lm1b,
    "lambada": lambada,
}


def get(kind: str) -> Callable[[str], str]:
    """The detokenizer named ``kind`` (one of ``DETOKENIZERS``)."""
    try:
        return DETOKENIZERS[kind]
    except KeyError:
        raise ValueError(f"unknown detokenizer {kind!r}; known: {sorted(DETOKENIZERS)}") from None
