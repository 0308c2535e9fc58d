"""Issue 9 finding 7: a killed worker's handle must not keep the dev database running forever."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from shared.dev.embedded import HANDLES_NAME, drop_dead_handles


def test_handles_of_dead_processes_are_dropped(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    handles = tmp_path / HANDLES_NAME
    handles.write_text(json.dumps([os.getpid(), dead.pid]))
    drop_dead_handles(tmp_path)
    assert json.loads(handles.read_text()) == [os.getpid()]


def test_no_handles_file_is_fine(tmp_path):
    drop_dead_handles(tmp_path)
    assert not (tmp_path / HANDLES_NAME).exists()
