"""The smoke-scale baseline's merge method: LlamaAvg's recipe on the workspace's tiny models."""

from __future__ import annotations

from llm_merging.merging.LlamaAvg import LlamaAvg


class ToyAvg(LlamaAvg):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.list_models = [("models/expert_a", None), ("models/expert_b", None)]
        self.base_model_name = "models/base"
        self.base_model_revision_id = None
        self.max_gen_len = 16
        self.parameter_lambdas = [0.5, 0.5]
