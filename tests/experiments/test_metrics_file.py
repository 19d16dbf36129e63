"""metrics.jsonl on resume: cut back to the checkpoint, atomically, surviving a torn line;
checkpoint folders: complete ones only, and a clear refusal of another format."""

import json

import numpy as np

from meta_opt.experiments.checkpoints import Checkpointer
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
        ckpt.save(step, {"x": np.asarray([step])}, {"episode": 0, "step": step,
                                                    "global_step": step})
    assert ckpt.steps() == [8, 12] and ckpt.meta(8)["step"] == 8
    # A save cut short by a kill: orbax's temporary folder, never renamed to a step.
    (ckpt.directory / "16.orbax-checkpoint-tmp-1").mkdir()
    assert ckpt.latest_step() == 12
    ckpt.close()
    reopened = Checkpointer(ckpt.directory)
    assert reopened.steps() == [8, 12]
    reopened.save(20, {"x": np.asarray([20])}, {"episode": 0, "step": 20, "global_step": 20})
    assert not (ckpt.directory / "16.orbax-checkpoint-tmp-1").exists()  # cleaned up
    assert reopened.steps() == [12, 20]
    reopened.delete_after(12)
    assert reopened.steps() == [12]
    state, meta = reopened.restore_raw(12)
    assert state["x"].tolist() == [12] and meta["global_step"] == 12
    legacy = ckpt.directory / "16"  # what the msgpack checkpoints of older versions held
    legacy.mkdir()
    (legacy / "state.msgpack").write_bytes(b"x")
    assert "older meta_opt" in reopened.problem(16)
    assert reopened.newest_readable()[0] == 12
    assert not legacy.exists() and list(ckpt.directory.glob("damaged_16_*"))
