"""metrics.jsonl on resume: cut back to the checkpoint, atomically, surviving a torn line."""

import json

from meta_opt.experiments.metrics import read_jsonl, truncate_jsonl


def test_truncate_keeps_lines_up_to_the_checkpoint_and_drops_a_torn_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "meta_loss": 1.0 / (s + 1)}) + "\n" for s in range(5)]
    path.write_text("".join(lines) + '{"step": 5, "meta_lo')  # killed mid-write
    assert [r["step"] for r in read_jsonl(path)] == [0, 1, 2, 3, 4]
    assert truncate_jsonl(path, 2, key="step") == 3
    assert path.read_text() == "".join(lines[:3])
    assert not (tmp_path / "metrics.jsonl.tmp").exists()


def test_truncate_of_a_missing_file_leaves_an_empty_one(tmp_path):
    path = tmp_path / "metrics.jsonl"
    assert truncate_jsonl(path, 10) == 0
    assert path.read_text() == ""
