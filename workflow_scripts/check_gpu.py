#!/usr/bin/env python
"""`make check-gpu`: the torch / CUDA / cuDNN / NCCL versions, each visible GPU, one bf16 matmul and one
SDPA call per GPU; exits non-zero, with the reason, where a GPU job would fail (training/devices.py)."""

import argparse
import sys

from dreamer4_libero.training.devices import check_gpu

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--gpus", type=int, default=1, help="GPUs the jobs of this node will ask for (default 1)")
    sys.exit(check_gpu(ap.parse_args().gpus))
