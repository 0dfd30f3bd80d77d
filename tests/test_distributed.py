"""Data-parallel training with torchrun (2 processes, gloo on CPU) through Trainer."""

import os
import subprocess
import sys

import torch
from safetensors.torch import load_file

WORKER = os.path.join(os.path.dirname(__file__), "scripts", "ddp_worker.py")


def test_torchrun_two_processes_synchronise_adapter_and_gin_parameters(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         WORKER, str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    for arm in ("sparse_gin", "gin_attention"):
        rank0 = load_file(str(tmp_path / f"{arm}-rank0.safetensors"))
        rank1 = load_file(str(tmp_path / f"{arm}-rank1.safetensors"))
        assert rank0.keys() == rank1.keys() and len(rank0) > 0
        changed = 0
        for key, value in rank0.items():
            torch.testing.assert_close(value, rank1[key], rtol=0, atol=0)  # ranks agree
            if key.startswith("after."):
                changed += not torch.equal(value, rank0["before." + key[len("after."):]])
        assert changed > 0, f"{arm}: no parameter moved during training"
