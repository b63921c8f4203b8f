"""Row labels of the variants: from the config and the archive's labels, never from run-name patterns.

`model_name` is a variant's name in the extended tables (with ‡ when it is a stand-in);
`variant_label` its label in the verbatim paper tables: the archive's label for the four archive
variants (reference.yaml), else the config's `label` (one string, or one per table), else one
built in the paper's style from the variant's settings (init, aux weight and input, space mode).
"""

from __future__ import annotations

from .reference import PAPER_PROBE_LABELS, PAPER_ROLLOUT_LABELS

PAPER_TABLES = ("probe", "rollout")


def model_name(v: dict) -> str:
    return v["name"] + (" ‡" if v.get("stand_in_for") else "")


def is_dmcontrol(v: dict) -> bool:
    init = v.get("init_from")
    return init == "dmcontrol" or isinstance(init, dict)


def configured_label(v: dict, table: str) -> str | None:
    """The config's `label` for `table`: a string labels both paper tables, {probe:, rollout:} each one."""
    label = v.get("label")
    if isinstance(label, dict):
        label = label.get(table)
    return str(label) if label else None


def variant_label(v: dict, table: str) -> str:
    """Row label of a variant in the verbatim paper tables (`table` = "probe" or "rollout").

    Derived labels read like the archive's: "(scratch)", "+ aux λ=…", "(no aux)" for a DMControl
    init without the aux head, "(leak-free aux)", "(agent reads frame)", and "(agent)" in the probe
    table (its rows are agent-token features).
    """
    if table not in PAPER_TABLES:
        raise ValueError(f"variant_label: table must be one of {PAPER_TABLES}, not {table!r}")
    fixed = PAPER_PROBE_LABELS if table == "probe" else PAPER_ROLLOUT_LABELS
    if v["name"] in fixed:
        return fixed[v["name"]]
    label = configured_label(v, table)
    if label:
        return label
    aux = float(v.get("aux_weight") or 0.0) > 0
    if is_dmcontrol(v):
        base = "D4 + DMControl pretrain"
    else:
        base = "D4 dynamics" if (table == "probe" or not aux) else "D4"
    if aux:
        lam = f" λ={float(v['aux_weight']):g}" if (table == "probe" and base == "D4 dynamics") else ""
        base += f" + aux{lam}"
    elif is_dmcontrol(v):
        base += " (no aux)"
    elif base == "D4 dynamics":
        base += " (scratch)"
    if aux and v.get("aux_input") == "action_free":
        base += " (leak-free aux)"
    if v.get("space_mode") == "agent_reads":
        base += " (agent reads frame)"
    if table == "probe":
        base += " (agent)"
    return base
