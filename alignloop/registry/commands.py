"""``alignloop models list | show ID | lineage ID``: what the registry knows about trained models."""

from __future__ import annotations

import json
from typing import Optional

from alignloop.registry.config import (  # noqa: F401
    ModelsLineageConfig,
    ModelsListConfig,
    ModelsShowConfig,
)


def _registry(url: Optional[str]):
    from alignloop.core.errors import AlignloopError
    from alignloop.registry.store import default_db_url, open_registry

    try:
        return open_registry(url)
    except Exception as exc:
        raise AlignloopError(f"cannot open the registry {url or default_db_url()}: "
                             f"{exc.__class__.__name__}: {exc}") from None


def run_list(cfg: ModelsListConfig) -> int:
    models = _registry(cfg.db).list_models()
    if cfg.json:
        print(json.dumps(models, indent=1))
        return 0
    if not models:
        print("no models registered yet (train one: alignloop sft --model tiny --data FILE --output DIR)")
        return 0
    print(f"{'ID':<12} {'NAME':<28} {'STAGE':<13} {'PARENT':<12} {'CREATED':<20} PATH")
    for m in models:
        print(f"{m['id']:<12} {m['name'][:28]:<28} {m['stage']:<13} {(m['parent_id'] or m['base_model'])[:12]:<12} "
              f"{m['created_at'][:19]:<20} {m['path']}")
    return 0


def run_show(cfg: ModelsShowConfig) -> int:
    print(json.dumps(_registry(cfg.db).show(cfg.model), indent=1))
    return 0


def format_lineage(lin: dict) -> str:
    lines = [f"model {lin['model_id']} — base model: {lin['base_model']}"]
    for depth, c in enumerate(lin["chain"]):
        pad = "  " * depth
        lines.append(f"{pad}{c['model_id']} '{c['name']}' made by {c['stage']} (run {c['run_id']}) from "
                     f"{c['parent_id'] or c['base_model']}")
        for d in c["data"]:
            lines.append(f"{pad}  {d['field']}: {d['path']} (sha256 {d['sha256'][:12]})")
            for e in d["exports"]:
                lines.append(f"{pad}    = export {e['export_id']} of project '{e['project']}' "
                             f"({e['format']}, {e['rows']} rows)")
        ids = c["judgment_ids"]
        if ids:
            kinds = ", ".join(f"{n} {k}" for k, n in sorted(c["labelers"].items()))
            shown = ", ".join(map(str, ids[:20])) + (f", … ({len(ids)} in all)" if len(ids) > 20 else "")
            lines.append(f"{pad}  labels: judgments {shown}" + (f" [{kinds}]" if kinds else ""))
        else:
            lines.append(f"{pad}  labels: none recorded (data not from a feedback-store export)")
    return "\n".join(lines)


def run_lineage(cfg: ModelsLineageConfig) -> int:
    lin = _registry(cfg.db).lineage(cfg.model)
    print(json.dumps(lin, indent=1) if cfg.json else format_lineage(lin))
    return 0
