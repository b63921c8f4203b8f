#!/usr/bin/env python
"""Install profiles/slurm as the user's `slurm` Snakemake profile, only when none exists (make slurm-profile).

`snakemake --profile slurm` looks for a bare profile name in ./slurm/, then
$XDG_CONFIG_HOME/snakemake/slurm (default ~/.config/snakemake/slurm), then /etc/xdg/snakemake/slurm
(snakemake_slurm.md §2). A site or user profile (with the cluster's account and partition) always
wins: this never overwrites or shadows one, and never creates ./slurm/.
"""

import argparse
import os
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def user_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "snakemake" / "slurm"


def site_dirs() -> list[Path]:
    dirs = os.environ.get("XDG_CONFIG_DIRS") or "/etc/xdg"
    return [Path(d) / "snakemake" / "slurm" for d in dirs.split(":") if d]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--source", default=str(REPO / "profiles" / "slurm"))
    a = ap.parse_args()
    user = user_dir()
    existing = [d for d in [user, *site_dirs()] if (d / "config.yaml").exists() or (d / "config.v8+.yaml").exists()]
    if existing:
        print(f"a `slurm` profile already exists at {existing[0]}: left as it is (snakemake --profile slurm uses it)")
        return 0
    if Path("slurm").exists():
        print("./slurm exists in the current folder and would shadow every `slurm` profile: remove it", file=sys.stderr)
        return 2
    user.mkdir(parents=True, exist_ok=True)
    shutil.copy2(Path(a.source) / "config.yaml", user / "config.yaml")
    print(f"installed {a.source}/config.yaml as {user}/config.yaml; now run: snakemake --profile slurm")
    return 0


if __name__ == "__main__":
    sys.exit(main())
