"""Each sample metric on a hand-made example, computed by hand."""

import math

import pytest

from eval.metrics import distinct_n, prefix_retention, sample_metrics, speed, stage_names, unigram_entropy


def test_prefix_retention_counts_multisets_token_weighted():
    # sample 1: prev [1, 2, 2, 3] vs next [2, 9, 1, 8]: kept 1 once, 2 once (twice in prev), 3 never -> 2 of 4
    # sample 2: prev [5, 6] vs next [6, 5, 5]: kept both -> 2 of 2
    result = prefix_retention([[1, 2, 2, 3], [5, 6]], [[2, 9, 1, 8], [6, 5, 5]])
    assert result["retained_tokens"] == 4 and result["prefix_tokens"] == 6
    assert result["value"] == pytest.approx(4 / 6)
    assert "multisets" in result["definition"]


def test_prefix_retention_mismatched_counts():
    with pytest.raises(ValueError, match="2 stage k-1 samples but 1"):
        prefix_retention([[1], [2]], [[1]])


def test_unigram_entropy_by_hand():
    # [1, 1, 2, 3]: p = 1/2, 1/4, 1/4 -> H = 1/2 ln 2 + 2 * 1/4 ln 4 = 1.5 ln 2; [7, 7, 7]: H = 0
    result = unigram_entropy([[1, 1, 2, 3], [7, 7, 7]])
    assert result["value"] == pytest.approx((1.5 * math.log(2) + 0.0) / 2)
    assert result["samples"] == 2


def test_distinct_n_by_hand():
    samples = [[1, 2, 1, 2], [1, 2, 3]]
    # unigrams: 7 total, distinct {1, 2, 3}
    assert distinct_n(samples, 1)["value"] == pytest.approx(3 / 7)
    # bigrams: (1,2) (2,1) (1,2) | (1,2) (2,3): 5 total, distinct {(1,2), (2,1), (2,3)}; none crosses samples
    d2 = distinct_n(samples, 2)
    assert (d2["distinct"], d2["total"]) == (3, 5)
    # trigrams: (1,2,1) (2,1,2) | (1,2,3): all distinct
    assert distinct_n(samples, 3)["value"] == 1.0
    with pytest.raises(ValueError, match="no 4-grams"):
        distinct_n([[1, 2, 3]], 4)


def test_speed_by_hand():
    result = speed([{"seconds": 0.5, "generated_tokens": 100}, {"seconds": 1.5, "generated_tokens": 100}])
    assert result["seconds_per_sample"]["value"] == pytest.approx(1.0)
    assert result["tokens_per_second"]["value"] == pytest.approx(200 / 2.0)


def test_sample_metrics_of_a_cascade_record_set():
    records = [
        {
            "stage1_ids": [1, 2],
            "stage2_ids": [1, 5, 2, 6],
            "stage3_ids": [1, 5, 9, 2, 6, 6],
            "seconds": 1.0,
            "generated_tokens": 12,
        },
        {
            "stage1_ids": [3, 4],
            "stage2_ids": [3, 7, 7, 8],
            "stage3_ids": [9, 7, 7, 8, 8, 8],
            "seconds": 3.0,
            "generated_tokens": 12,
        },
    ]
    assert stage_names(records[0]) == ["stage1", "stage2", "stage3"]
    m = sample_metrics(records)
    assert m["final_stage"] == "stage3"
    # stage1 -> stage2: 2/2 + 1/2 -> 3 of 4
    assert m["prefix_retention_stage1_stage2"]["value"] == pytest.approx(3 / 4)
    # stage2 -> stage3: [1,5,2,6] all kept (4); [3,7,7,8]: 3 dropped, 7 x2, 8 -> 3 -> 7 of 8
    assert m["prefix_retention_stage2_stage3"]["value"] == pytest.approx(7 / 8)
    assert m["distinct_1"]["value"] == pytest.approx(len({1, 5, 9, 2, 6, 7, 8}) / 12)
    assert m["seconds_per_sample"]["value"] == pytest.approx(2.0)
    assert m["tokens_per_second"]["value"] == pytest.approx(24 / 4)
    single = sample_metrics([{"stage3_ids": [1, 2, 3], "seconds": 1, "generated_tokens": 3}])
    assert not any(k.startswith("prefix_retention") for k in single)
