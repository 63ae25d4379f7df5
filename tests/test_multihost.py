"""Two processes on this machine, as two hosts of one job (`multihost_worker`).

What only several processes show: sums of metric accumulators across them,
checkpoints loaded onto devices of both, and preemption of one of them.
"""
import json
import os
import pathlib
import socket
import subprocess
import sys

REPO = pathlib.Path(__file__).parent.parent


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes(tmp_path):
  env = dict(os.environ, PYTHONPATH=str(REPO),
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  port = str(_free_port())
  workers = [subprocess.Popen(
      [sys.executable, str(REPO / "tests" / "multihost_worker.py"), str(i),
       port, str(tmp_path)], env=env, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True) for i in range(2)]
  outputs = [worker.communicate(timeout=300) for worker in workers]
  for worker, (_, stderr) in zip(workers, outputs):
    assert worker.returncode == 0, stderr[-3000:]
  seen = [json.loads(stdout.strip().splitlines()[-1]) for stdout, _ in outputs]
  for process in seen:
    # Not wrapped to int32 nor rounded to float32 on the way.
    assert process["int64_sum"] == 2**31 + 6
    assert process["float64_sum"] == 2 + 2.0**-39
    assert process["float64_dtype"] == "float64"
    assert process["loaded_on_mesh"]
  # SIGTERM reached process 1 only, at step 5: both stop, at the same step.
  assert seen[0]["stopped_at"] == seen[1]["stopped_at"] >= 5
