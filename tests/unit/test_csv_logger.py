"""The run's CSV log: continued across resumes, on Lightning's public logger API, with its
position kept in checkpoints by the callback that owns it."""

from __future__ import annotations

import csv

from fair_lightning.lightning.resume import RunPosition
from fair_lightning.lightning.tracking import RunCSVLogger


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_a_new_column_widens_the_header_and_keeps_the_rows(tmp_path):
    lg = RunCSVLogger(tmp_path, flush_every_n_steps=1000)
    lg.log_metrics({"a": 1.0}, step=0)
    lg.save()
    lg.log_metrics({"b": 2.0}, step=1)
    lg.log_metrics({"a": 3.0, "b": 4.0}, step=2)
    assert lg.rows_written() == 3
    assert _rows(tmp_path / "csv" / "metrics.csv") == [
        ["a", "b", "step"], ["1.0", "", "0"], ["", "2.0", "1"], ["3.0", "4.0", "2"]]


def test_a_resumed_start_keeps_what_it_will_not_log_again(tmp_path):
    path = tmp_path / "csv" / "metrics.csv"
    path.parent.mkdir()
    # checkpointed after 2 rows; the killed start then wrote its own batch's row (step 1,
    # another kind) and two rows the resumed start logs again from step 2
    path.write_text("a,step\n1,0\n2,1\n3,1\n4,2\n5,3\n")
    lg = RunCSVLogger(tmp_path)
    position = RunPosition(lg)
    position.load_state_dict({"csv_rows": 2, "val_metrics": {"val/loss": 0.5}})
    assert position.val_metrics == {"val/loss": 0.5}
    lg.log_metrics({"a": 6.0}, step=2)
    lg.finalize("success")
    assert _rows(path) == [["a", "step"], ["1", "0"], ["2", "1"], ["3", "1"], ["6.0", "2"]]
    # what a checkpoint written now keeps
    assert position.state_dict() == {"csv_rows": 4, "val_metrics": {"val/loss": 0.5}}


def test_without_a_csv_log_the_position_holds_the_validation_only(tmp_path):
    position = RunPosition(None)
    assert position.state_dict() == {"csv_rows": None, "val_metrics": {}}
    position.load_state_dict({"csv_rows": 7, "val_metrics": {}})  # nothing to continue
