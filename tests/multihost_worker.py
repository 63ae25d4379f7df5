"""One of the two processes of `test_multihost.py` (2 CPU devices each).

python tests/multihost_worker.py PROCESS_ID PORT WORKDIR prints one JSON line
of what it saw, for the test to compare across the processes.
"""
import json
import os
import signal
import sys
import time

import jax
import numpy as np

process_id, port, workdir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
jax.distributed.initialize(f"localhost:{port}", num_processes=2,
                           process_id=process_id)

# After initialize: train.py's imports must not start the backend first.
from evaluators import common  # pylint: disable=g-import-not-at-top
import ml_collections  # pylint: disable=g-import-not-at-top
import train  # pylint: disable=g-import-not-at-top
from uvimx import checkpoint  # pylint: disable=g-import-not-at-top
from uvimx import sharding  # pylint: disable=g-import-not-at-top

seen = {}

# Counts beyond int32 and float64 sums, summed over the processes.
seen["int64_sum"] = int(common.process_sum(
    np.array([2**31 + 5 if process_id == 0 else 1], np.int64))[0])
total = common.process_sum(np.array(1 + 2.0**-40))
seen["float64_sum"], seen["float64_dtype"] = float(total), str(total.dtype)

# A checkpoint's params loaded onto a mesh over both processes' devices.
mesh = sharding.make_mesh([("data", -1)])
rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
values = np.arange(8.0, dtype=np.float32).reshape(4, 2)
state = {"params": {"w": jax.make_array_from_callback(
    values.shape, rows, lambda index: values[index])},
         "opt": {"mu": jax.make_array_from_callback(
             values.shape, rows, lambda index: values[index])}}
mngr = checkpoint.manager(
    workdir, ml_collections.ConfigDict({"keep_checkpoint_steps": None}))
checkpoint.save(mngr, 1, state)
mngr.wait_until_finished()
mngr.close()
loaded = checkpoint.load_variables(
    os.path.join(workdir, "checkpoints", "1"),
    {"params": {"w": jax.ShapeDtypeStruct(values.shape, values.dtype,
                                          sharding=rows)}})["params"]["w"]
# And (a big_vision .npz's) numpy arrays, as the train state's init puts them.
put = jax.device_put(values, rows)
seen["loaded_on_mesh"] = all(
    array.sharding == rows and all(
        np.array_equal(shard.data, values[shard.index])
        for shard in array.addressable_shards) for array in (loaded, put))

# Preemption: only process 1 gets SIGTERM; both must stop at one step.
watch = train._watch_preemption  # pylint: disable=protected-access
preempted, stop_watching = watch()
for step in range(1, 400):
  if step == 5 and process_id == 1:
    os.kill(os.getpid(), signal.SIGTERM)
  if preempted(step):
    seen["stopped_at"] = step
    break
  time.sleep(0.02)
stop_watching()

print(json.dumps(seen), flush=True)
jax.distributed.shutdown()
