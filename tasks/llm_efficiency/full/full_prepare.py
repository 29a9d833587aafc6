"""Full scale (GPU host with the hub reachable): fetch an approved base model and Dolly-15k
into the workspace layout the baseline expects."""

from __future__ import annotations

import json
from pathlib import Path

from datasets import load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

BASE = "mistralai/Mistral-7B-v0.1"


def main() -> None:
    AutoTokenizer.from_pretrained(BASE).save_pretrained("base_model")
    AutoModelForCausalLM.from_pretrained(BASE, torch_dtype="bfloat16").save_pretrained("base_model")
    out = Path("data/dolly")
    out.mkdir(parents=True, exist_ok=True)
    with (out / "train.jsonl").open("w") as f:
        for row in load_dataset("databricks/databricks-dolly-15k")["train"]:
            instruction = (row["instruction"] + " " + row["context"]).strip()
            f.write(json.dumps({"instruction": instruction, "response": row["response"]}) + "\n")


if __name__ == "__main__":
    main()
