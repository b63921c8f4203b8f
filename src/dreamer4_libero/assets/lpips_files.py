"""Names of the LPIPS weight files, importable without torch (the Snakefile reads them at parse time)."""

NETWORK = "alex"
VERSION = "0.1"
WEIGHTS_FILENAME = f"lpips_{NETWORK}_v{VERSION}.pt"  # converted state dict
SIDECAR_FILENAME = f"lpips_{NETWORK}_v{VERSION}.json"  # its sources and sha256
#: the study's asset folder (relative to the workflow's working directory), made by rule fetch_lpips
ASSET_DIR = "results/assets/lpips"
