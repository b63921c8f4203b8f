"""Files the workflow fetches, verifies and caches for its jobs (I/O, no model code).

lpips_files.py  the LPIPS weight file names (no torch: the Snakefile imports it at parse time)
lpips_weights.py fetch, verify and convert the LPIPS(alex, v0.1) weights into a per-machine cache
lpips_asset.py  copy the cache into the study's asset folder (submit host) and check it in a job

The LPIPS network itself is models/lpips.py.
"""
