"""Scripted baseline for llm_merging: the upstream recipe (a weighted average of LoRA experts
folded into their base) run through the scaffold, `python main.py -m NAME`.

At smoke scale it adds its own method, as an agent is asked to: a new file in
llm_merging/merging/ registered in pyproject.toml; at full scale it runs the shipped
`llama_avg` example on the staged Llama-2-7B and its two adapters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tasks.baseline_scripts import write_calls

HERE = Path(__file__).resolve().parent


def plan(scale: str) -> list[dict[str, Any]]:
    if scale == "smoke":
        pyproject = (HERE / "starter" / "pyproject.toml").read_text()
        pyproject = pyproject.replace(
            'flan_t5_avg = "llm_merging.merging.FlanT5Avg:FlanT5Avg"\n',
            'flan_t5_avg = "llm_merging.merging.FlanT5Avg:FlanT5Avg"\n'
            'toy_avg = "llm_merging.merging.ToyAvg:ToyAvg"\n')
        setup = [{"name": "write_file", "args": {"path": "llm_merging/merging/ToyAvg.py",
                                                 "content": (HERE / "smoke" / "ToyAvg.py").read_text()}},
                 {"name": "write_file", "args": {"path": "pyproject.toml", "content": pyproject}}]
        run = "python main.py -m toy_avg --out model --validation data/validation --eval-limit 8"
    else:
        setup = []
        run = "python main.py -m llama_avg --out model"
    return [
        *write_calls("mlrb_log.py"),
        *setup,
        {"name": "bash", "args": {"command": run, "timeout_s": 600 if scale == "smoke" else 3900}},
        {"name": "submit", "args": {"path": "model", "summary": "weighted average of two LoRA experts, folded into the base"}},
    ]
