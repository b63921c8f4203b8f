#!/usr/bin/env python
"""`make check-gpu`: does this node run the study as planned? First the torch / CUDA / cuDNN / NCCL versions,
each visible GPU, one bf16 matmul and one SDPA call per GPU (training/devices.py); then, on the paper-scale
configs, bf16 train steps (steps/s, MFU, peak memory against the plan, the SDPA kernel), bf16 vs fp32 over
20 steps, the 276M KV-cached rollout and, with 2 GPUs, a DDP gradient check (training/node_check.py).
Writes --out (JSON) and its .md table; exits non-zero, with the reasons, where a check fails.
`--device cpu --tiny`: the same code at tiny sizes on the CPU (what the test suite runs)."""

import argparse
import sys

from dreamer4_libero.training.devices import check_gpu, print_build_info


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--gpus", type=int, default=1, help="GPUs the jobs of this node will ask for (default 1)")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny model sizes (seconds on a CPU) instead of config.yaml's")
    ap.add_argument(
        "--out", default="bench/results/gpu_check.json", help="the report (JSON; the table beside it as .md)"
    )
    ap.add_argument(
        "--steps", type=int, default=None, help="timed train steps per config (default 10 on a GPU, 3 on the CPU)"
    )
    ap.add_argument("--no-ddp", action="store_true", help="skip the 2-process DDP gradient check")
    a = ap.parse_args()
    if a.device == "cuda":
        rc = check_gpu(a.gpus)  # the environment: stop here where a GPU job would fail
        if rc:
            return rc
    else:
        print_build_info()
    from dreamer4_libero.training import node_check
    from dreamer4_libero.training.node_check_report import write_report

    print(f"[check-gpu] {'tiny' if a.tiny else 'paper-scale'} configs on {a.device} ...", flush=True)
    report = node_check.run(a.device, tiny=a.tiny, steps=a.steps, ddp=not a.no_ddp, log=lambda s: print(s, flush=True))
    js, md = write_report(report, a.out)
    print(f"[check-gpu] wrote {js} and {md} ({report['seconds']:.0f} s)")
    for f in report["failures"]:
        print(f"FAILED: {f}", flush=True)
    if report["ok"]:
        print("OK: every check passed", flush=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
