"""The README's reading loop under DDP: two CPU ranks (gloo) with an all_reduce per batch, as DDP's backward does,
over a split whose shards hold uneven sample counts. Every rank must get the same number of batches, or the
rank with more waits forever in its collective."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shards.synthetic import write_synthetic_store

SCRIPT = r'''
import json, os, sys
from datetime import timedelta
import torch
import torch.distributed as dist
from shards.reader import StoreReader
from shards.torchdata import StoreDataset

dist.init_process_group("gloo", timeout=timedelta(seconds=60))
reader = StoreReader(sys.argv[1], "train2017", ["base"], shuffle=True, seed=0, resampled=False)
loader = torch.utils.data.DataLoader(StoreDataset(reader), batch_size=None, num_workers=int(sys.argv[3]))
keys = []
for epoch in range(2):
    reader.set_epoch(epoch)
    for s in loader:
        t = torch.ones(1)
        dist.all_reduce(t)  # what DDP's backward does once per batch
        keys.append((epoch, s["__key__"]))
with open(os.path.join(sys.argv[2], f"rank{dist.get_rank()}.json"), "w") as f:
    json.dump(keys, f)
dist.destroy_process_group()
'''


@pytest.mark.parametrize("workers", [0, 2])
def test_the_readme_loop_finishes_under_ddp_with_uneven_shards(tmp_path: Path, workers: int) -> None:
    store = tmp_path / "store"
    write_synthetic_store(store, "train2017", 13, 8, size=16)  # shards of 8 and 5 samples
    script = tmp_path / "loop.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          str(29500 + os.getpid() % 1000 + workers), str(script), str(store), str(tmp_path),
                          str(workers)], capture_output=True, text=True, timeout=240, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [len(r) for r in ranks] == [14, 14]  # 7 samples per rank and epoch: 13 padded to 14
    for epoch in range(2):
        seen = {k for r in ranks for e, k in r if e == epoch}
        assert len(seen) == 13  # every sample of the split, each epoch
