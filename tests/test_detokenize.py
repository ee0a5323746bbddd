"""Detokenizers on hand-made strings in each corpus's own tokenized style."""

import pytest

from preprocess import detokenize


def test_wikitext_number_separators_and_punctuation():
    raw = " The 1st @-@ year class , with 1 @,@ 000 students , scored 3 @.@ 5 ; it was a record . \n"
    assert detokenize.wikitext(raw) == " The 1st-year class, with 1,000 students, scored 3.5; it was a record.\n"


def test_wikitext_headings_longest_first():
    # (the space before each newline goes too: " \n" -> "\n")
    assert detokenize.wikitext(" = Valkyria = \n") == " = Valkyria =\n"
    assert detokenize.wikitext(" = = Gameplay = = \n") == " == Gameplay ==\n"
    assert detokenize.wikitext(" = = = Plot = = = \n") == " === Plot ===\n"
    assert detokenize.wikitext(" = = = = Cast = = = = \n") == " ==== Cast ====\n"


def test_wikitext_brackets_quotes_and_contractions():
    raw = 'He said " hello there " ( in 1990 ) [ citation ] { x } and the players \' scores'
    assert detokenize.wikitext(raw) == "He said \"hello there\" (in 1990) [citation] {x} and the players' scores"
    assert detokenize.wikitext("the team 's coach") == "the team's coach"
    assert detokenize.wikitext("in the ' 90s") == "in the '90s"


def test_wikitext_degrees_and_newline_spaces():
    assert detokenize.wikitext("at 40 ° north \n next") == "at 40°north\nnext"


def test_ptb():
    raw = "the company 's chief said it does n't expect $ N million in N N <unk> \\/ year"
    assert detokenize.ptb(raw) == "the company's chief said it doesn't expect $1 million in 1 1 ? / year"
    assert detokenize.ptb("investors ' money") == "investors' money"


def test_ptb_repeated_placeholders_all_replaced():
    # Adjacent placeholders share spaces; a single str.replace leaves every second one behind.
    assert detokenize.ptb("a N N N N N b") == "a 1 1 1 1 1 b"


def test_lm1b():
    raw = "He visited http : / / example.com , they 're told \" it is fine \" ( mostly ) for $ 5 / day ."
    assert detokenize.lm1b(raw) == "He visited http://example.com, they're told \"it is fine\" (mostly) for $5/day."
    assert detokenize.lm1b("Is it ? Yes !") == "Is it? Yes!"
    assert detokenize.lm1b("It cost £ 3 ; then : more") == "It cost £3; then: more"


def test_lambada():
    assert detokenize.lambada("  \u201cHi,\u201d she said.\n") == '"Hi," she said.'


def test_get_names_unknown_kind():
    assert detokenize.get("ptb") is detokenize.ptb
    with pytest.raises(ValueError, match="unknown detokenizer 'bogus'"):
        detokenize.get("bogus")
