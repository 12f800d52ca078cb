"""LocalBuilder: preparing local data prints one line of ours, no TFDS download banner, no
"Using custom data configuration" warning and, off a terminal, no progress bars; file stamps
change with the content."""

import logging
import os

import numpy as np
import PIL.Image
from tensorflow_datasets.core.utils import tqdm_utils

from jaxvision.data.builders import imagefolder, local


def test_preparing_a_folder_is_quiet_off_a_terminal(tmp_path, capfd, caplog):
  for c in ("x", "y"):
    (tmp_path / "imgs" / c).mkdir(parents=True)
    PIL.Image.new("RGB", (4, 4), (10, 20, 30)).save(tmp_path / "imgs" / c / "0.png")
  caplog.set_level(logging.INFO)
  active = tqdm_utils._active
  builder = imagefolder.imagefolder_builder(tmp_path / "imgs", data_dir=tmp_path / "tfds")
  builder.download_and_prepare()
  builder.download_and_prepare()  # prepared: nothing more is printed
  out, err = capfd.readouterr()
  assert out.splitlines() == [f"Preparing records (first use only): {builder.data_dir}"]
  assert err == ""  # no progress bars: stderr is not a terminal here
  logged = "\n".join(r.getMessage() for r in caplog.records)
  assert "custom data configuration" not in logged and "FolderConfig(" not in logged
  assert tqdm_utils._active == active  # the process-wide switch is restored
  assert builder.info.splits["train"].num_examples == 2


def test_file_stamp_hashes_small_files_and_stats_large_ones(tmp_path):
  path = tmp_path / "labels.txt"
  path.write_bytes(b"abc")
  stat = path.stat()
  small = local.file_stamp(path)
  assert small.startswith("3:sha256=")
  path.write_bytes(b"abd")
  os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
  assert local.file_stamp(path) != small  # same size and mtime, other bytes
  assert local.file_stamp(path, hash_up_to=2) == f"3:{stat.st_mtime_ns}"
  os.utime(path, ns=(1, stat.st_mtime_ns + 1))
  assert local.file_stamp(path, hash_up_to=2) == f"3:{stat.st_mtime_ns + 1}"
  (tmp_path / ".hidden.txt").write_text("x")
  (tmp_path / "b.jpg").write_bytes(np.zeros(5, np.uint8).tobytes())
  assert [line.split("\t")[0] for line in local.folder_stamps(tmp_path)] == ["b.jpg",
                                                                            "labels.txt"]
  assert local.folder_stamps(tmp_path, suffixes=(".JPG",))[0].startswith("b.jpg\t5:sha256=")
