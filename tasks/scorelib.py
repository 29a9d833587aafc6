"""Shared code of the protected MLRB scorers.

The scoring container mounts a task's `scorer/` folder and this file, both read-only, and
puts this file's folder on PYTHONPATH (`tasks.api.score_command`). Needs torch and
transformers only.

A scorer never crashes on a bad submission: it prints one JSON object as its last stdout
line, with value 0 and an "error" when the model is missing or broken.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

# dtypes a submission may store its weights in, where the task forbids quantisation
FLOAT_DTYPES = {"F16", "F32"}
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2,
                "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
_TORCH_DTYPE = {"torch.float32": "F32", "torch.float16": "F16", "torch.bfloat16": "BF16",
                "torch.float64": "F64", "torch.int8": "I8", "torch.uint8": "U8",
                "torch.int32": "I32", "torch.int64": "I64", "torch.bool": "BOOL"}
# folders the tasks ship as inputs; never taken for the submission when searching
INPUT_DIRS = {"base_model", "models", "data", "starter", ".mlrb", "scorer"}


class ScoreError(Exception):
    """A submission that cannot be scored; the message says why, for the operator."""


def result(metric: str, value: float, metrics: dict[str, Any] | None = None,
           details: dict[str, Any] | None = None, error: str | None = None) -> dict[str, Any]:
    v = float(value) if value is not None and math.isfinite(float(value)) else 0.0
    return {"metric": metric, "value": v, "metrics": metrics or {metric: v},
            "details": details or {}, "error": error}


def main(metric: str, score: Callable[[argparse.Namespace], dict[str, Any]]) -> None:
    """Parse the scorer's argv, run `score`, print exactly one JSON result line last."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--workspace", required=True, type=Path)
    ap.add_argument("--scale", choices=["smoke", "full"], default="smoke")
    ap.add_argument("--model", default=None, help="the submitted folder, relative to the workspace")
    args = ap.parse_args()
    try:
        out = score(args)
    except ScoreError as exc:
        out = result(metric, 0.0, error=str(exc))
    except Exception as exc:  # noqa: BLE001 - a broken submission must still give a result
        traceback.print_exc(file=sys.stderr)
        out = result(metric, 0.0, error=f"{exc.__class__.__name__}: {exc}"[:2000])
    sys.stdout.flush()
    print(json.dumps(out, default=str), flush=True)


def data_file(name: str) -> Path:
    """A held-out file beside the running scorer (`scorer/data/NAME`)."""
    return Path(sys.argv[0]).resolve().parent / "data" / name


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# -- finding and inspecting the submission ------------------------------------------------
def _inside(workspace: Path, p: Path) -> Path:
    ws = workspace.resolve()
    rp = p.resolve()
    if rp != ws and ws not in rp.parents:
        raise ScoreError(f"submission {p} points outside the workspace")
    return rp


def find_model(workspace: Path, explicit: str | None = None) -> Path:
    """The submitted model folder: --model, else .mlrb/submission.json, else model/, else
    the one folder holding a config.json that is not a shipped input."""
    if not workspace.is_dir():
        raise ScoreError(f"workspace {workspace} does not exist")
    candidates: list[str] = []
    if explicit:
        candidates.append(explicit)
    marker = workspace / ".mlrb" / "submission.json"
    if marker.is_file():
        try:
            path = json.loads(marker.read_text()).get("path")
            if isinstance(path, str):
                candidates.append(path)
        except (ValueError, AttributeError):
            pass
    candidates.append("model")
    for c in candidates:
        p = workspace / c.removeprefix("/workspace/").lstrip("/")
        if (p / "config.json").is_file():
            return _inside(workspace, p)
    found = sorted(
        cfg.parent for cfg in workspace.rglob("config.json")
        if not (set(cfg.relative_to(workspace).parts[:-1]) & INPUT_DIRS)
    )
    if len(found) == 1:
        return _inside(workspace, found[0])
    if not found:
        raise ScoreError("no model: save a Hugging Face model (save_pretrained) and submit "
                         "its folder, e.g. model/")
    names = ", ".join(str(f.relative_to(workspace)) for f in found[:5])
    raise ScoreError(f"several model folders ({names}); submit one, e.g. model/")


def safetensors_header(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ScoreError(f"{path.name}: not a safetensors file")
        (n,) = struct.unpack("<Q", raw)
        if n > 100 * 1024 * 1024:
            raise ScoreError(f"{path.name}: safetensors header too large")
        try:
            header = json.loads(f.read(n))
        except ValueError as exc:
            raise ScoreError(f"{path.name}: bad safetensors header") from exc
    header.pop("__metadata__", None)
    return header


def weights_summary(model_dir: Path) -> dict[str, Any]:
    """Parameter count, bytes at the stored dtype, and the dtypes, without loading a model."""
    tensors: dict[str, tuple[str, int]] = {}
    files = sorted(model_dir.glob("*.safetensors"))
    for f in files:
        for name, meta in safetensors_header(f).items():
            numel = 1
            for d in meta.get("shape", []):
                numel *= int(d)
            tensors[name] = (str(meta.get("dtype")), numel)
    bins = sorted(model_dir.glob("pytorch_model*.bin"))
    if not files and bins:
        import torch

        for f in bins:
            state = torch.load(f, map_location="cpu", weights_only=True)
            for name, t in state.items():
                tensors[name] = (_TORCH_DTYPE.get(str(t.dtype), str(t.dtype)), t.numel())
        files = bins
    if not tensors:
        raise ScoreError(f"{model_dir.name}/ holds no weights (*.safetensors or pytorch_model.bin)")
    dtypes: Counter[str] = Counter()
    nbytes = 0
    params = 0
    for dtype, numel in tensors.values():
        dtypes[dtype] += numel
        params += numel
        nbytes += numel * _DTYPE_BYTES.get(dtype, 4)
    return {"params": params, "bytes": nbytes, "dtypes": dict(dtypes),
            "files": [f.name for f in files]}


def read_config(model_dir: Path) -> dict[str, Any]:
    try:
        cfg = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ScoreError(f"{model_dir.name}/config.json is unreadable: {exc}") from exc
    if not isinstance(cfg, dict):
        raise ScoreError(f"{model_dir.name}/config.json is not an object")
    return cfg


def check_float_only(model_dir: Path, summary: dict[str, Any]) -> None:
    """FP16/FP32 only: no quantisation config, no integer or 8-bit weights."""
    cfg = read_config(model_dir)
    if "quantization_config" in cfg:
        raise ScoreError("quantised model (quantization_config in config.json); FP16/FP32 only")
    bad = sorted(set(summary["dtypes"]) - FLOAT_DTYPES)
    if bad:
        raise ScoreError(f"weights stored as {', '.join(bad)}; FP16/FP32 only")


# -- loading and log-likelihoods -----------------------------------------------------------
def load_model(model_dir: Path) -> tuple[Any, Any, bool]:
    """(model, tokenizer, is_seq2seq), in float32 on CPU (or the GPU when one is there)."""
    import torch
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForSeq2SeqLM,
        AutoTokenizer,
    )

    try:
        config = AutoConfig.from_pretrained(model_dir)
        tok = AutoTokenizer.from_pretrained(model_dir)
        seq2seq = bool(getattr(config, "is_encoder_decoder", False))
        cls = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
        model = cls.from_pretrained(model_dir, torch_dtype=torch.float32)
    except Exception as exc:  # noqa: BLE001 - any loading failure is the submission's
        raise ScoreError(f"cannot load the model in {model_dir.name}/: "
                         f"{exc.__class__.__name__}: {str(exc)[:500]}") from exc
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).eval()  # type: ignore[arg-type]
    return model, tok, seq2seq


def _ids(tok: Any, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"])


def _prefix(tok: Any) -> list[int]:
    for t in (tok.bos_token_id, tok.eos_token_id):
        if t is not None:
            return [int(t)]
    return []


def logprob(model: Any, tok: Any, context: str, continuation: str) -> float:
    """Sum of log P(continuation | context) under a causal LM, as lm-eval's loglikelihood."""
    import torch

    c_ids = _ids(tok, context) if context else []
    full = _ids(tok, f"{context} {continuation}" if context else continuation)
    cont = full[len(c_ids):] if full[:len(c_ids)] == c_ids else _ids(tok, " " + continuation)
    ctx = _prefix(tok) + c_ids
    if not ctx:
        ctx, cont = cont[:1], cont[1:]
    if not cont:
        return 0.0
    limit = int(getattr(model.config, "n_positions", 0) or
                getattr(model.config, "max_position_embeddings", 0) or 2048)
    ids = (ctx + cont)[-limit:]
    n_cont = min(len(cont), len(ids) - 1)
    x = torch.tensor([ids], device=model.device)
    with torch.no_grad():
        logits = model(x).logits[0, :-1].float()
    lp = torch.log_softmax(logits, -1)
    targets = x[0, 1:]
    picked = lp[torch.arange(len(targets)), targets]
    return float(picked[-n_cont:].sum())


def choice_accuracy(model: Any, tok: Any, items: list[dict[str, Any]]) -> dict[str, float]:
    """Multiple choice by log-likelihood: acc (sum) and acc_norm (per token), as lm-eval."""
    right = right_norm = 0
    for it in items:
        scores = [logprob(model, tok, it["context"], c) for c in it["choices"]]
        lens = [max(1, len(_ids(tok, c))) for c in it["choices"]]
        right += int(max(range(len(scores)), key=scores.__getitem__) == it["label"])
        norm = [s / n for s, n in zip(scores, lens, strict=True)]
        right_norm += int(max(range(len(norm)), key=norm.__getitem__) == it["label"])
    n = max(1, len(items))
    return {"acc": right / n, "acc_norm": right_norm / n}


def minimal_pair_accuracy(model: Any, tok: Any, pairs: list[dict[str, str]]) -> dict[str, float]:
    """BLiMP: the share of pairs where log P(good) > log P(bad); per phenomenon too."""
    by: dict[str, list[int]] = {}
    for p in pairs:
        ok = logprob(model, tok, "", p["good"]) > logprob(model, tok, "", p["bad"])
        by.setdefault(p.get("phenomenon", "all"), []).append(int(ok))
    out = {f"acc_{k}": sum(v) / len(v) for k, v in sorted(by.items())}
    total = [x for v in by.values() for x in v]
    out["acc"] = sum(total) / max(1, len(total))
    return out


# -- text metrics --------------------------------------------------------------------------
def _ngrams(toks: list[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(toks[i:i + n]) for i in range(len(toks) - n + 1))


def bleu(hyps: list[str], refs: list[str], max_n: int = 4) -> float:
    """Corpus BLEU-4 on whitespace tokens with add-one smoothing of n>1 precisions (0..1)."""
    match = [0] * max_n
    total = [0] * max_n
    hyp_len = ref_len = 0
    for h, r in zip(hyps, refs, strict=True):
        ht, rt = h.split(), r.split()
        hyp_len += len(ht)
        ref_len += len(rt)
        for n in range(1, max_n + 1):
            hc, rc = _ngrams(ht, n), _ngrams(rt, n)
            match[n - 1] += sum(min(c, rc[g]) for g, c in hc.items())
            total[n - 1] += max(0, len(ht) - n + 1)
    if hyp_len == 0 or match[0] == 0:
        return 0.0
    logp = 0.0
    for n in range(max_n):
        m, t = (match[n], total[n]) if n == 0 else (match[n] + 1, total[n] + 1)
        logp += math.log(m / t) / max_n
    bp = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return bp * math.exp(logp)


def _lcs(a: list[str], b: list[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(hyps: list[str], refs: list[str]) -> float:
    """Mean ROUGE-L F1 on whitespace tokens (0..1)."""
    scores = []
    for h, r in zip(hyps, refs, strict=True):
        ht, rt = h.split(), r.split()
        lcs = _lcs(ht, rt)
        if not ht or not rt or lcs == 0:
            scores.append(0.0)
            continue
        p, rc = lcs / len(ht), lcs / len(rt)
        scores.append(2 * p * rc / (p + rc))
    return sum(scores) / max(1, len(scores))


# -- Lean 3 --------------------------------------------------------------------------------
_LEAN3_DECL = re.compile(
    r"^\s*(theorem|lemma)\s+[A-Za-z_][\w.']*\s*"
    r"((\([^()]*\)|\{[^{}]*\}|\[[^\[\]]*\]|⦃[^⦃⦄]*⦄)\s*)*"
    r":\s*(?P<stmt>.+?)\s*:=\s*(?P<proof>\S.*)$", re.S)
_LEAN4_ONLY = re.compile(r"=>|\bimport\s+Mathlib|\bNat\.|\bReal\.|\bfun\s+\w+\s*=>|\bby\s*\n\s+\w")
_PAIRS = {")": "(", "]": "[", "}": "{", "⟩": "⟨", "⦄": "⦃"}


def lean3_syntax_ok(text: str) -> tuple[bool, str]:
    """A syntax check for one Lean 3 declaration, for hosts without a Lean toolchain."""
    stack: list[str] = []
    for ch in text:
        if ch in "([{⟨⦃":
            stack.append(ch)
        elif ch in _PAIRS:
            if not stack or stack.pop() != _PAIRS[ch]:
                return False, "unbalanced brackets"
    if stack:
        return False, "unbalanced brackets"
    if _LEAN4_ONLY.search(text):
        return False, "Lean 4 syntax"
    m = _LEAN3_DECL.match(text)
    if not m:
        return False, "not a `theorem name binders : statement := proof` declaration"
    proof = m.group("proof")
    opens = len(re.findall(r"\bbegin\b", proof))
    if opens != len(re.findall(r"\bend\b", proof)):
        return False, "begin/end do not match"
    if re.search(r":=|\btheorem\b|\blemma\b", proof):
        return False, "more than one declaration"
    return True, ""


def lean_compile(text: str, timeout_s: float = 60) -> tuple[bool, str] | None:
    """Compile with a real `lean` (Lean 3) when one is on PATH; None when there is none."""
    exe = shutil.which("lean")
    if exe is None:
        return None
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "Submission.lean"
        src.write_text(text + "\n")
        try:
            proc = subprocess.run([exe, str(src)], capture_output=True, text=True,
                                  timeout=timeout_s, cwd=d, env={**os.environ})
        except subprocess.TimeoutExpired:
            return False, "lean timed out"
    return proc.returncode == 0, (proc.stdout + proc.stderr)[-300:]


# -- full scale ----------------------------------------------------------------------------
LM_EVAL_BATCH_SIZE = 8  # upstream's prompts: `lm_eval ... --batch_size 8`
# the folder of lm-eval's own task definitions each benchmark task lives in: indexing only those
# (not the thousands of others) takes seconds instead of minutes, with the same definitions
# SuperGLUE as lm-eval's `super-glue-lm-eval-v1` tag scores it, less ReCoRD: it has no accuracy
# to average, and its definition imports squad_metrics, which transformers 5 no longer has
SUPERGLUE_TASKS = ["boolq", "cb", "copa", "multirc", "sglue_rte", "wic", "wsc"]
LM_EVAL_TASK_DIRS = {"mmlu": "mmlu", "blimp": "blimp", **{t: "super_glue" for t in SUPERGLUE_TASKS}}


def lm_eval(model_dir: Path, tasks: list[str], num_fewshot: int | None = None,
            details: dict[str, Any] | None = None) -> dict[str, Any]:
    """The benchmark's own evaluation at full scale, through EleutherAI's lm-eval harness, with
    the datasets its task definitions name read from the staged cache (the hub is offline).
    `details` gets what the score depends on: lm-eval's version, the tasks, dtype, batch size."""
    try:
        import lm_eval as harness  # type: ignore[import-not-found]
    except ImportError as exc:
        raise ScoreError("full-scale scoring needs lm-eval (pip install lm-eval) in the "
                         "scoring image") from exc
    import torch

    dtype = "float16" if torch.cuda.is_available() else "float32"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    manager = None
    if all(t in LM_EVAL_TASK_DIRS for t in tasks):
        from lm_eval.tasks import TaskManager  # type: ignore[import-not-found]

        root = Path(harness.__file__).parent / "tasks"
        dirs = dict.fromkeys(str(root / LM_EVAL_TASK_DIRS[t]) for t in tasks)
        manager = TaskManager(include_path=list(dirs), include_defaults=False)
    out = harness.simple_evaluate(model="hf", model_args=f"pretrained={model_dir},dtype={dtype}",
                                  tasks=tasks, num_fewshot=num_fewshot, device=device,
                                  batch_size=LM_EVAL_BATCH_SIZE, task_manager=manager)
    if details is not None:
        details["lm_eval"] = {"version": _version("lm_eval"), "tasks": tasks, "dtype": dtype,
                              "batch_size": LM_EVAL_BATCH_SIZE, "num_fewshot": num_fewshot or 0,
                              "device": device}
    return {k: v for k, v in (out or {}).get("results", {}).items()}


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


def mmlu_result(metric: str, model_dir: Path, scale: str, details: dict[str, Any],
                extra: dict[str, Any] | None = None, by_subject: bool = False) -> dict[str, Any]:
    """MMLU for the tasks scored on it: lm-eval at full scale, the held-out four-way
    questions by log-likelihood at smoke scale (the same code path, smaller)."""
    extra = extra or {}
    if scale == "full":
        value = lm_eval_metric(lm_eval(model_dir, ["mmlu"], details=details), "mmlu")
        return result(metric, value, {metric: value, **extra}, details)
    model, tok, _ = load_model(model_dir)
    items = read_jsonl(data_file("mmlu_smoke.jsonl"))
    acc = choice_accuracy(model, tok, items)
    metrics = {metric: acc["acc"], "mmlu_acc_norm": acc["acc_norm"], **extra}
    if by_subject:
        for subject in sorted({it["subject"] for it in items}):
            metrics[f"mmlu_{subject}"] = choice_accuracy(
                model, tok, [it for it in items if it["subject"] == subject])["acc"]
    details.update(items=len(items), chance=0.25)
    return result(metric, acc["acc"], metrics, details)


def superglue_result(metric: str, model_dir: Path, scale: str, details: dict[str, Any],
                     extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """SuperGLUE for the tasks scored on it: the mean accuracy of lm-eval's
    `super-glue-lm-eval-v1` tasks but ReCoRD (SUPERGLUE_TASKS) at full scale, the held-out choice items by log-likelihood at smoke."""
    extra = extra or {}
    if scale == "full":
        res = lm_eval(model_dir, SUPERGLUE_TASKS, details=details)
        subs = {k: float(v["acc,none"]) for k, v in res.items() if "acc,none" in v}
        if not subs:
            raise ScoreError("lm-eval returned no SuperGLUE accuracies")
        value = sum(subs.values()) / len(subs)
        details["aggregate"] = f"mean acc of {', '.join(sorted(subs))}"
        return result(metric, value, {metric: value, **subs, **extra}, details)
    model, tok, _ = load_model(model_dir)
    items = read_jsonl(data_file("superglue_smoke.jsonl"))
    acc = choice_accuracy(model, tok, items)
    details.update(items=len(items), chance=0.375)  # half two-way items, half four-way recall
    return result(metric, acc["acc"], {metric: acc["acc"], "superglue_acc_norm": acc["acc_norm"],
                                       **extra}, details)


def lm_eval_metric(results: dict[str, Any], task: str, key: str = "acc,none") -> float:
    try:
        return float(results[task][key])
    except (KeyError, TypeError, ValueError) as exc:
        raise ScoreError(f"lm-eval gave no {key} for {task}") from exc

