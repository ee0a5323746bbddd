"""Preprocessing: raw text -> sharded Parquet -> tokenizer -> annotated shards -> stage datasets."""
