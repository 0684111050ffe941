"""[ingest] Image files and VOC boxes into validated, deduplicated items, and the test split."""
