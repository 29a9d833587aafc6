"""Tiny copies of the benchmark's hub repositories, under their real ids, for full-scale tests.

Each dataset is laid out as the hub serves it: a dataset card whose `configs:` names each
config's parquet files, and those files. Staged through the real client from the stand-in hub
(tests/hub_server.py), they are loaded by the same `load_dataset` calls as on a GPU host. The
models are tiny and random, saved with save_pretrained beside a byte-level BPE tokenizer trained
here, so nothing is fetched.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from tests.hub_server import StandInHub

MMLU_REPO = "cais/mmlu"  # lm-eval's mmlu/default/_default_template_yaml
BLIMP_REPO = "nyu-mll/blimp"  # lm-eval's blimp/_template_yaml
SUPERGLUE_REPO = "aps/super_glue"  # lm-eval's super_glue/*/default.yaml (super-glue-lm-eval-v1)
EOT = "<|endoftext|>"

# the subtasks of lm-eval's `mmlu` and `blimp` groups, one dataset config each
MMLU_SUBJECTS = """
abstract_algebra anatomy astronomy business_ethics clinical_knowledge college_biology
college_chemistry college_computer_science college_mathematics college_medicine college_physics
computer_security conceptual_physics econometrics electrical_engineering elementary_mathematics
formal_logic global_facts high_school_biology high_school_chemistry high_school_computer_science
high_school_european_history high_school_geography high_school_government_and_politics
high_school_macroeconomics high_school_mathematics high_school_microeconomics
high_school_physics high_school_psychology high_school_statistics high_school_us_history
high_school_world_history human_aging human_sexuality international_law jurisprudence
logical_fallacies machine_learning management marketing medical_genetics miscellaneous
moral_disputes moral_scenarios nutrition philosophy prehistory professional_accounting
professional_law professional_medicine professional_psychology public_relations security_studies
sociology us_foreign_policy virology world_religions
""".split()
BLIMP_PHENOMENA = """
adjunct_island anaphor_gender_agreement anaphor_number_agreement animate_subject_passive
animate_subject_trans causative complex_NP_island
coordinate_structure_constraint_complex_left_branch
coordinate_structure_constraint_object_extraction determiner_noun_agreement_1
determiner_noun_agreement_2 determiner_noun_agreement_irregular_1
determiner_noun_agreement_irregular_2 determiner_noun_agreement_with_adj_2
determiner_noun_agreement_with_adj_irregular_1 determiner_noun_agreement_with_adj_irregular_2
determiner_noun_agreement_with_adjective_1 distractor_agreement_relational_noun
distractor_agreement_relative_clause drop_argument ellipsis_n_bar_1 ellipsis_n_bar_2
existential_there_object_raising existential_there_quantifiers_1 existential_there_quantifiers_2
existential_there_subject_raising expletive_it_object_raising inchoative intransitive
irregular_past_participle_adjectives irregular_past_participle_verbs
irregular_plural_subject_verb_agreement_1 irregular_plural_subject_verb_agreement_2
left_branch_island_echo_question left_branch_island_simple_question
matrix_question_npi_licensor_present npi_present_1 npi_present_2 only_npi_licensor_present
only_npi_scope passive_1 passive_2 principle_A_c_command principle_A_case_1 principle_A_case_2
principle_A_domain_1 principle_A_domain_2 principle_A_domain_3 principle_A_reconstruction
regular_plural_subject_verb_agreement_1 regular_plural_subject_verb_agreement_2
sentential_negation_npi_licensor_present sentential_negation_npi_scope sentential_subject_island
superlative_quantifiers_1 superlative_quantifiers_2 tough_vs_raising_1 tough_vs_raising_2
transitive wh_island wh_questions_object_gap wh_questions_subject_gap
wh_questions_subject_gap_long_distance wh_vs_that_no_gap wh_vs_that_no_gap_long_distance
wh_vs_that_with_gap wh_vs_that_with_gap_long_distance
""".split()

Rows = list[dict[str, Any]]


def parquet(rows: Rows) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    return buf.getvalue()


def dataset_repo(configs: dict[str, dict[str, Rows]]) -> dict[str, bytes]:
    """A hub dataset repository's files: config -> split -> rows, as parquet with a card."""
    card = ["---", "configs:"]
    files: dict[str, bytes] = {}
    for config, splits in configs.items():
        card += [f"- config_name: {config}", "  data_files:"]
        for split, rows in splits.items():
            path = f"{config}/{split}-00000-of-00001.parquet"
            card += [f"  - split: {split}", f"    path: {path}"]
            files[path] = parquet(rows)
    files["README.md"] = ("\n".join([*card, "---", "", "A tiny copy for tests."]) + "\n").encode()
    return files


def mmlu_rows(subject: str, n: int) -> Rows:
    return [{"question": f"Which {subject.replace('_', ' ')} answer is number {i % 4}?",
             "subject": subject, "choices": ["zero", "one", "two", "three"], "answer": i % 4}
            for i in range(n)]


def mmlu(rows_per_subject: int = 1, extra: dict[str, Rows] | None = None) -> dict[str, bytes]:
    """cais/mmlu: a config per subject with test, validation and dev splits."""
    configs: dict[str, dict[str, Rows]] = {}
    for s in MMLU_SUBJECTS:
        test = (extra or {}).get(s) or mmlu_rows(s, rows_per_subject)
        configs[s] = {"test": test, "validation": mmlu_rows(s, 1), "dev": mmlu_rows(s, 1)}
    return dataset_repo(configs)


def blimp_rows(phenomenon: str, n: int) -> Rows:
    word = phenomenon.split("_")[0]
    return [{"sentence_good": f"The cats sleep near {word} houses.",
             "sentence_bad": f"The cats sleeps near {word} houses.", "field": "syntax",
             "linguistics_term": phenomenon, "UID": phenomenon, "simple_LM_method": True,
             "one_prefix_method": False, "two_prefix_method": False, "lexically_identical": False,
             "pair_id": i} for i in range(n)]


def blimp(rows_per_phenomenon: int = 1) -> dict[str, bytes]:
    """nyu-mll/blimp: a config per phenomenon, one train split of minimal pairs."""
    return dataset_repo({p: {"train": blimp_rows(p, rows_per_phenomenon)} for p in BLIMP_PHENOMENA})


def super_glue() -> dict[str, bytes]:
    """aps/super_glue: the configs of lm-eval's super-glue-lm-eval-v1, train and validation."""
    def two(make: Callable[[int], dict[str, Any]]) -> dict[str, Rows]:
        return {"train": [make(0)], "validation": [make(0), make(1)]}

    return dataset_repo({
        "boolq": two(lambda i: {"question": "is the sky blue", "passage": "The sky is blue.",
                                "idx": i, "label": i % 2}),
        "cb": two(lambda i: {"premise": "It rains.", "hypothesis": "It is wet", "idx": i,
                             "label": i % 3}),
        "copa": two(lambda i: {"premise": "The man fell.", "choice1": "He slipped.",
                               "choice2": "He sang.", "question": "cause", "idx": i, "label": i % 2}),
        "multirc": two(lambda i: {"paragraph": "Tom has a dog.", "question": "What has Tom?",
                                  "answer": "a dog", "idx": {"paragraph": 0, "question": 0, "answer": i},
                                  "label": i % 2}),
        "record": two(lambda i: {"passage": "Anna met Bob.\n@highlight\nThey talked",
                                 "query": "@placeholder met Bob", "entities": ["Anna", "Bob"],
                                 "entity_spans": {"text": ["Anna", "Bob"], "start": [0, 9], "end": [4, 12]},
                                 "answers": ["Anna"], "idx": {"passage": i, "query": i}}),
        "rte": two(lambda i: {"premise": "A cat sits.", "hypothesis": "An animal sits.", "idx": i,
                              "label": i % 2}),
        "wic": two(lambda i: {"word": "bank", "sentence1": "The bank is open.",
                              "sentence2": "The river bank is wet.", "start1": 4, "start2": 10,
                              "end1": 8, "end2": 14, "idx": i, "label": i % 2}),
        "wsc.fixed": two(lambda i: {"text": "Mark told Pete he was late.", "span1_index": 0,
                                    "span2_index": 3, "span1_text": "Mark", "span2_text": "he",
                                    "idx": i, "label": i % 2}),
    })


def text_dataset(splits: dict[str, Iterable[str]], field: str = "text") -> dict[str, bytes]:
    """A one-config dataset of text rows (MiniPile-shaped)."""
    return dataset_repo({"default": {s: [{field: t} for t in texts] for s, texts in splits.items()}})


def add_dataset(hub: StandInHub, repo: str, files: dict[str, bytes]) -> str:
    """Put a dataset repository on the stand-in hub; its commit."""
    return str(hub.add("dataset", repo, files, lfs=tuple(p for p in files if p.endswith(".parquet"))).commit)


CORPUS = ("The quick brown fox jumps over the lazy dog. Question: Answer: A. B. C. D. yes no True "
          "False Neither because therefore zero one two three cats sleep sleeps near houses "
          "theorem lemma begin end := nat real x y z + - * = ( ) : , . ? ! \n")


def tokenizer(dest: Path) -> Any:
    """A byte-level BPE tokenizer trained on a few sentences: every text encodes, offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([CORPUS] * 4, trainers.BpeTrainer(
        vocab_size=400, special_tokens=[EOT], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOT, eos_token=EOT, unk_token=EOT)
    fast.save_pretrained(dest)
    return fast


def causal_lm(dest: Path, model_type: str = "gpt2", seed: int = 0) -> Path:
    """A tiny random causal LM with its tokenizer, saved as a submission folder."""
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, PhiConfig

    tok = tokenizer(dest)
    vocab = len(tok)
    small: dict[str, Any] = {"vocab_size": vocab, "bos_token_id": tok.bos_token_id,
                             "eos_token_id": tok.eos_token_id}
    if model_type == "gpt2":
        config: Any = GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=512, **small)
    elif model_type == "phi":
        config = PhiConfig(num_hidden_layers=1, num_attention_heads=2, hidden_size=16,
                           intermediate_size=32, max_position_embeddings=512, **small)
    else:
        config = LlamaConfig(num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                             hidden_size=16, intermediate_size=32, max_position_embeddings=512, **small)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(dest, safe_serialization=True)
    (dest / "README.md").write_text(json.dumps({"tiny": model_type}) + "\n")
    return dest
