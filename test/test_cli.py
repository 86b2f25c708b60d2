"""The `vltseg` command's own behaviour, common to every subcommand."""
import os
import subprocess
import sys


def test_output_into_a_closed_pipe_stops_quietly():
    """`vltseg ... | head`: when the reader is gone, the command stops with the shell's SIGPIPE status (141) and
    says nothing, instead of an 'error: [Errno 32] Broken pipe' line."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line is written
    try:
        proc = subprocess.run([sys.executable, "-m", "vltseg_core.cli", "train", "demo_camvid", "--print-config"],
                              stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(write_end)
    assert (proc.returncode, proc.stderr) == (141, "")
