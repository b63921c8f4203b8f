"""The published and quoted reference numbers and the long table captions, from `reference.yaml`.

Loaded once at import; the names below are what the table builders use. Edit the YAML file, not
this module, to change a number or a caption.
"""

from __future__ import annotations

from pathlib import Path

import yaml

_DATA = yaml.safe_load((Path(__file__).with_name("reference.yaml")).read_text(encoding="utf-8"))

ARCHIVE_VARIANTS: tuple[str, ...] = tuple(_DATA["archive_variants"])
ARCHIVED_R2: dict[str, float] = {k: float(v) for k, v in _DATA["archived_probe_r2"].items()}
ARCHIVED_ROLLOUT: dict[str, float] = {k: float(v) for k, v in _DATA["archived_rollout_psnr"].items()}
ARCHIVED_TOKENIZER_PSNR: float = float(_DATA["archived_tokenizer_psnr"])
PAPER_PROBE_LABELS: dict[str, str] = dict(_DATA["paper_labels"]["probe"])
PAPER_ROLLOUT_LABELS: dict[str, str] = dict(_DATA["paper_labels"]["rollout"])
# (Table 1 model name, paper-table label, R², params)
QUOTED_PROBE: tuple[tuple[str, str, float, str], ...] = tuple(
    (q["model"], q["label"], float(q["r2"]), str(q["params"])) for q in _DATA["quoted_probe"]
)
DAGGER: str = _DATA["dagger"]
QUOTED_NOTE: str = _DATA["quoted_note"]
TOK_PSNR_BAR: float = float(_DATA["quality_bars"]["tokenizer_psnr_db"])
ROLLOUT_POOLED_BAR: float = float(_DATA["quality_bars"]["rollout_pooled_psnr_db"])
EMA_DECAY: float = float(_DATA["quality_bars"]["ema_decay"])

for _name in ARCHIVE_VARIANTS:  # a typo in the YAML fails here, at import, not in a half-built table
    for _table in (ARCHIVED_R2, ARCHIVED_ROLLOUT, PAPER_PROBE_LABELS, PAPER_ROLLOUT_LABELS):
        if _name not in _table:
            raise KeyError(f"{Path(__file__).with_name('reference.yaml')}: no entry for archive variant {_name}")


def caption(key: str, **fields) -> str:
    """The caption template `key` of reference.yaml with its `{fields}` filled in."""
    return _DATA["captions"][key].format(**fields)
