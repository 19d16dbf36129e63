"""metrics.jsonl on resume: cut back to the checkpoint, atomically, surviving a torn line;
checkpoint folders: complete ones only, and a clear refusal of another format."""

import json

import pytest

from meta_opt.experiments.checkpoints import Checkpointer
from meta_opt.experiments.metrics import read_jsonl, truncate_jsonl
from meta_opt.optimizers.config import ConfigError


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


def test_truncate_by_position_compares_episode_then_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"episode": e, "step": s, "global_step": e * 8 + s}
            for e, s in [(0, 0), (0, 4), (0, 8), (1, 0), (1, 4)]]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # (1, 0) has global step 8 like (0, 8), but comes after it.
    assert truncate_jsonl(path, (0, 8), key=("episode", "step")) == 3
    assert [(r["episode"], r["step"]) for r in read_jsonl(path)] == [(0, 0), (0, 4), (0, 8)]


def test_checkpoints_count_only_when_complete_and_other_formats_are_refused(tmp_path):
    ckpt = Checkpointer(tmp_path / "checkpoints", max_to_keep=2)
    for step in (4, 8, 12):
        ckpt.save(step, {"x": [step]}, {"episode": 0, "step": step, "global_step": step})
    assert ckpt.steps() == [8, 12] and ckpt.meta(8)["step"] == 8
    (ckpt.directory / "16").mkdir()  # a save cut short before its meta.json: not a step
    (ckpt.directory / ".tmp-20-1").mkdir()
    assert ckpt.latest_step() == 12
    assert Checkpointer(ckpt.directory).steps() == [8, 12]  # and the temporary one is gone
    assert not (ckpt.directory / ".tmp-20-1").exists()
    ckpt.delete_after(8)
    assert ckpt.steps() == [8]
    (ckpt.directory / "16" / "state").mkdir()  # what an orbax checkpoint holds
    with pytest.raises(ConfigError, match="--restart"):
        ckpt.steps()
