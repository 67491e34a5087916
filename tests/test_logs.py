"""The TensorBoard writer and reader: what one writes the other reads back, without TensorFlow."""

import subprocess
import sys
import pathlib

from mlfd_jax import logs

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_scalars_read_back_in_step_order_across_flushes(tmp_path):
  writer = logs.TensorBoardWriter(str(tmp_path / "tb"))
  writer.write_scalars(1, {"train/loss": 2.5, "val_top1": 0.25})
  writer.flush()
  writer.write_scalars(2, {"train/loss": 1.5})
  writer.write_scalars(3, {"val_top1": 0.75})
  writer.close()
  files = list((tmp_path / "tb").iterdir())
  assert len(files) == 1 and "tfevents" in files[0].name  # one local file, appended to
  scalars = logs.read_scalars(str(tmp_path / "tb"))
  assert scalars == {"train/loss": [(1, 2.5), (2, 1.5)], "val_top1": [(1, 0.25), (3, 0.75)]}


def test_each_flush_to_a_bucket_is_one_whole_file_in_time_order(tmp_path, monkeypatch):
  """In a bucket an object shows only once written: every flush makes a new, complete file."""
  written = {}
  monkeypatch.setattr(logs.fileio, "is_url", lambda p: True)
  monkeypatch.setattr(logs.fileio, "makedirs", lambda p: None)
  monkeypatch.setattr(logs.fileio, "write_atomic", written.__setitem__)
  writer = logs.TensorBoardWriter("gs://b/tb")
  writer.write_scalars(1, {"val_top1": 0.5})
  writer.flush()
  writer.flush()  # nothing new: no empty file
  writer.write_scalars(2, {"val_top1": 0.625})
  writer.close()
  names = list(written)
  assert len(names) == 2 and names == sorted(names)
  for name, data in written.items():  # each file alone is a readable event file
    (tmp_path / pathlib.PurePosixPath(name).name).write_bytes(data)
  assert logs.read_scalars(str(tmp_path)) == {"val_top1": [(1, 0.5), (2, 0.625)]}


def test_a_resumed_runs_repeated_steps_keep_their_latest_value_and_a_cut_record_is_skipped(
    tmp_path):
  first = logs.TensorBoardWriter(str(tmp_path))
  first.write_scalars(100, {"val_top1": 0.5})
  first.write_scalars(200, {"val_top1": 0.625})  # logged, then the run was preempted
  first.close()
  resumed = logs.TensorBoardWriter(str(tmp_path))  # restarted from the step-100 checkpoint
  resumed.write_scalars(200, {"val_top1": 0.75})
  resumed.write_scalars(300, {"val_top1": 0.875})
  resumed.close()
  last = sorted(tmp_path.iterdir())[-1]  # name order is time order
  last.write_bytes(last.read_bytes()[:-7])  # its last record cut short, as by a kill mid-write
  assert logs.read_scalars(str(tmp_path)) == {"val_top1": [(100, 0.5), (200, 0.75)]}


def test_simple_value_scalars_of_other_writers_are_read_too(tmp_path):
  from tensorboard.compat.proto import event_pb2, summary_pb2
  from tensorboard.summary.writer import record_writer
  path = tmp_path / "events.out.tfevents.1.host"
  with open(path, "wb") as f:
    writer = record_writer.RecordWriter(f)
    writer.write(event_pb2.Event(step=5, summary=summary_pb2.Summary(value=[
        summary_pb2.Summary.Value(tag="val_top1", simple_value=0.25)])).SerializeToString())
  assert logs.read_scalars(str(tmp_path)) == {"val_top1": [(5, 0.25)]}


def test_writing_and_reading_import_no_tensorflow(tmp_path):
  code = ("import sys; from mlfd_jax import logs; w = logs.make_writer(sys.argv[1]); "
          "w.write_scalars(0, {'a': 1.0}); w.close(); r = logs.read_scalars(sys.argv[1]); "
          "print(type(w).__name__, r, [m for m in sys.modules if m.split('.')[0] in "
          "('tensorflow', 'clu')])")
  r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  assert r.stdout == "TensorBoardWriter {'a': [(0, 1.0)]} []\n"
