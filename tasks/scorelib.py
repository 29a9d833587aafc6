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
LOCAL_DTYPE = "float32"  # what load_model loads every submission in
LOCAL_BATCH_SIZE = 1  # the local scorers feed one sequence at a time


def local_method(evaluator: str, aggregate: str, **extra: Any) -> dict[str, Any]:
    """How a scorer of this library computed its score (details.method), at either scale."""
    import torch

    return {"evaluator": evaluator, "aggregate": aggregate, "dtype": LOCAL_DTYPE,
            "batch_size": LOCAL_BATCH_SIZE, "device": "cuda" if torch.cuda.is_available() else "cpu",
            "torch_version": torch.__version__, **extra}


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
# sacrebleu's corpus BLEU and rouge-score's ROUGE-L, through those packages when the scorer
# image has them, else the same computations here (checked against hand-worked values).
_13A = [
    (re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])"), r" \1 "),  # punctuation and symbols
    (re.compile(r"([^0-9])([\.,])"), r"\1 \2 "),  # period and comma unless after a digit
    (re.compile(r"([\.,])([^0-9])"), r" \1 \2"),  # period and comma unless before a digit
    (re.compile(r"([0-9])(-)"), r"\1 \2 "),  # a dash after a digit
]


def tokenize_13a(line: str) -> list[str]:
    """sacrebleu's default tokenizer (mteval-v13a)."""
    line = line.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    if "&" in line:
        line = (line.replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<")
                .replace("&gt;", ">"))
    line = f" {line} "
    for pattern, repl in _13A:
        line = pattern.sub(repl, line)
    return line.split()


def _ngrams(toks: list[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(toks[i:i + n]) for i in range(len(toks) - n + 1))


def bleu_exact(hyps: list[str], refs: list[str], max_n: int = 4) -> float:
    """Corpus BLEU as sacrebleu computes it by default (one reference each, 13a tokens,
    exponential smoothing of zero counts), on its 0..100 scale."""
    correct = [0] * max_n
    total = [0] * max_n
    sys_len = ref_len = 0
    for h, r in zip(hyps, refs, strict=True):
        ht, rt = tokenize_13a(h), tokenize_13a(r)
        sys_len += len(ht)
        ref_len += len(rt)
        for n in range(1, max_n + 1):
            hc, rc = _ngrams(ht, n), _ngrams(rt, n)
            correct[n - 1] += sum(min(c, rc[g]) for g, c in hc.items())
            total[n - 1] += max(0, len(ht) - n + 1)
    if sys_len == 0:
        return 0.0
    precisions = [0.0] * max_n
    smooth = 1.0
    for n in range(max_n):
        if total[n] == 0:
            break
        if correct[n] == 0:
            smooth *= 2
            precisions[n] = 100.0 / (smooth * total[n])
        else:
            precisions[n] = 100.0 * correct[n] / total[n]
    logs = [math.log(p) if p > 0 else -9999999999.0 for p in precisions]
    bp = 1.0 if sys_len >= ref_len else math.exp(1 - ref_len / sys_len)
    return bp * math.exp(sum(logs) / max_n)


def bleu(hyps: list[str], refs: list[str]) -> tuple[float, str]:
    """(corpus BLEU 0..100, which implementation ran)."""
    try:
        import sacrebleu  # type: ignore[import-not-found]
    except ImportError:
        return bleu_exact(hyps, refs), "scorelib (sacrebleu's computation)"
    return float(sacrebleu.corpus_bleu(hyps, [refs]).score), f"sacrebleu {sacrebleu.__version__}"


def _lcs(a: list[str], b: list[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_tokens(text: str) -> list[str]:
    """rouge-score's default tokenizer: lowercase, runs of [a-z0-9] only, no stemming."""
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).split()


def rouge_l_exact(hyps: list[str], refs: list[str]) -> float:
    """Mean ROUGE-L F1 (0..1) as rouge-score's `rougeL` computes it, pair by pair."""
    scores = []
    for h, r in zip(hyps, refs, strict=True):
        ht, rt = rouge_tokens(h), rouge_tokens(r)
        lcs = _lcs(ht, rt) if ht and rt else 0
        if lcs == 0:
            scores.append(0.0)
            continue
        p, rc = lcs / len(ht), lcs / len(rt)
        scores.append(2 * p * rc / (p + rc))
    return sum(scores) / max(1, len(scores))


def rouge_l(hyps: list[str], refs: list[str]) -> tuple[float, str]:
    """(mean ROUGE-L F1 0..1, which implementation ran)."""
    try:
        from rouge_score import rouge_scorer  # type: ignore[import-not-found]
    except ImportError:
        return rouge_l_exact(hyps, refs), "scorelib (rouge-score's computation)"
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    f = [scorer.score(r, h)["rougeL"].fmeasure for h, r in zip(hyps, refs, strict=True)]
    return sum(f) / max(1, len(f)), "rouge-score"


# -- Lean 3 --------------------------------------------------------------------------------
_LEAN3_DECL = re.compile(
    r"^\s*(theorem|lemma)\s+[A-Za-z_][\w.']*\s*"
    r"((\([^()]*\)|\{[^{}]*\}|\[[^\[\]]*\]|⦃[^⦃⦄]*⦄)\s*)*"
    r":\s*(?P<stmt>.+?)\s*:=\s*(?P<proof>\S.*)$", re.S)
_LEAN4_ONLY = re.compile(r"=>|\bimport\s+Mathlib|\bNat\.|\bReal\.|\bfun\s+\w+\s*=>|\bby\s*\n\s+\w")
_PAIRS = {")": "(", "]": "[", "}": "{", "⟩": "⟨", "⦄": "⦃"}
LEAN3_PROJECT = "/opt/lean3-mathlib"  # where the scorer image keeps a leanpkg project with mathlib


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


class Lean3:
    """A Lean 3 toolchain with mathlib: the `lean` executable and the LEAN_PATH of a leanpkg
    project whose dependencies include mathlib."""

    def __init__(self, exe: str, version: str, lean_path: str, project: Path) -> None:
        self.exe, self.version, self.lean_path, self.project = exe, version, lean_path, project

    def compile(self, text: str, header: str = "", timeout_s: float = 120) -> tuple[bool, str]:
        with tempfile.TemporaryDirectory() as d:
            src = Path(d) / "Submission.lean"
            src.write_text((header.rstrip() + "\n\n" if header else "") + text + "\n")
            try:
                proc = subprocess.run([self.exe, str(src)], capture_output=True, text=True,
                                      timeout=timeout_s, cwd=self.project,
                                      env={**os.environ, "LEAN_PATH": self.lean_path})
            except subprocess.TimeoutExpired:
                return False, "lean timed out"
        return proc.returncode == 0, (proc.stdout + proc.stderr)[-300:]


def lean3_toolchain() -> tuple[Lean3 | None, str]:
    """The scorer's Lean 3 toolchain with mathlib, or None and why there is none. The project is
    $MLRB_LEAN3_PROJECT, else /opt/lean3-mathlib: a leanpkg project depending on mathlib,
    built (`leanproject get-mathlib-cache` or `leanpkg build`), with `lean` 3.x on PATH."""
    exe = shutil.which("lean")
    if exe is None:
        return None, "no `lean` on the scorer's PATH"
    try:
        ver = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"`lean --version` failed: {exc}"
    m = re.search(r"version (\d+)\.(\d+)\.(\d+)", ver)
    if not m or m.group(1) != "3":
        return None, f"`lean` is not Lean 3 ({ver.strip()[:60] or 'no version'})"
    project = Path(os.environ.get("MLRB_LEAN3_PROJECT", LEAN3_PROJECT))
    if not (project / "leanpkg.toml").is_file():
        return None, f"no leanpkg project at {project} (set MLRB_LEAN3_PROJECT)"
    try:
        raw = subprocess.run([exe, "--path"], capture_output=True, text=True, timeout=60, cwd=project).stdout
        paths = [str(x) for x in json.loads(raw)["path"]]
    except (OSError, subprocess.SubprocessError, ValueError, KeyError, TypeError) as exc:
        return None, f"`lean --path` in {project} gave no search path ({type(exc).__name__})"
    if not any("mathlib" in x for x in paths):
        return None, f"the project at {project} does not depend on mathlib"
    return Lean3(exe, ".".join(m.groups()), os.pathsep.join(paths), project), ""


def lean_compile(text: str, timeout_s: float = 60) -> tuple[bool, str] | None:
    """Compile with the scorer's Lean 3 toolchain with mathlib; None when it has none."""
    lean, _why = lean3_toolchain()
    return None if lean is None else lean.compile(text, timeout_s=timeout_s)


def staged_file(repo: str, path: str, kind: str = "dataset", revision: str = "main") -> Path:
    """A file of a staged hub repository, read from the mounted cache (HF_HUB_CACHE) the way the
    client would offline: refs/<revision> names the commit, snapshots/<commit>/ holds the file."""
    cache = os.environ.get("HF_HUB_CACHE")
    if not cache:
        raise ScoreError(f"no hub cache is mounted for the scorer (HF_HUB_CACHE); stage {repo} "
                         "with `mlrb assets fetch`")
    folder = Path(cache) / f"{kind}s--{repo.replace('/', '--')}"
    ref = folder / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else revision
    found = folder / "snapshots" / commit / path
    if not found.is_file():
        raise ScoreError(f"{repo}: {path} is not staged at {revision} in the scorer's hub cache; "
                         "run `mlrb assets fetch` for the task")
    return found


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
        details["method"] = lm_eval_method(out or {}, tasks, dtype, num_fewshot, device)
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


def lm_eval_method(out: dict[str, Any], tasks: list[str], dtype: str,
                   num_fewshot: int | None, device: str = "auto") -> dict[str, Any]:
    """The method of an lm-eval evaluation, from what simple_evaluate returned."""
    config = out.get("config") or {}
    method: dict[str, Any] = {
        "evaluator": "lm-eval", "lm_eval_version": _version("lm_eval"), "tasks": list(tasks),
        "dtype": dtype, "batch_size": config.get("batch_size", LM_EVAL_BATCH_SIZE),
        "num_fewshot": num_fewshot if num_fewshot is not None else "task default",
        "device": config.get("device") or device}
    shots = out.get("n-shot") or {}
    if shots:
        method["n_shot"] = {k: shots[k] for k in sorted(shots)}
    return method


def mmlu_result(metric: str, model_dir: Path, scale: str, details: dict[str, Any],
                extra: dict[str, Any] | None = None, by_subject: bool = False) -> dict[str, Any]:
    """MMLU for the tasks scored on it: lm-eval at full scale, the held-out four-way
    questions by log-likelihood at smoke scale (the same code path, smaller)."""
    extra = extra or {}
    if scale == "full":
        value = lm_eval_metric(lm_eval(model_dir, ["mmlu"], details=details), "mmlu")
        details["method"].update(aggregate="lm-eval's mmlu group acc,none", metric="acc,none")
        return result(metric, value, {metric: value, **extra}, details)
    model, tok, _ = load_model(model_dir)
    items = read_jsonl(data_file("mmlu_smoke.jsonl"))
    acc = choice_accuracy(model, tok, items)
    details["method"] = local_method(
        "mlrb log-likelihood multiple choice (lm-eval's loglikelihood, acc)",
        f"accuracy over the {len(items)} held-out four-way MMLU-style items", metric="acc")
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
        details["method"].update(superglue_aggregate(res, subs),
                                 not_run={"record": "F1/EM, no accuracy to average; its definition "
                                                    "imports squad_metrics, gone from transformers 5"})
        details["aggregate"] = f"mean acc of {', '.join(sorted(subs))}"
        return result(metric, value, {metric: value, **subs, **extra}, details)
    model, tok, _ = load_model(model_dir)
    items = read_jsonl(data_file("superglue_smoke.jsonl"))
    acc = choice_accuracy(model, tok, items)
    details["method"] = local_method(
        "mlrb log-likelihood multiple choice (lm-eval's loglikelihood, acc)",
        f"accuracy over the {len(items)} held-out SuperGLUE-style choice items", metric="acc")
    details.update(items=len(items), chance=0.375)  # half two-way items, half four-way recall
    return result(metric, acc["acc"], {metric: acc["acc"], "superglue_acc_norm": acc["acc_norm"],
                                       **extra}, details)


def superglue_aggregate(res: dict[str, Any], subs: dict[str, float]) -> dict[str, Any]:
    """What the SuperGLUE figure is the mean of: which subtasks, which metric, which left out."""
    left_out = sorted(k for k in res if k not in subs)
    names = ", ".join(sorted(subs))
    return {"aggregate": f"unweighted mean of acc,none over {len(subs)} subtasks: {names}",
            "metric": "acc,none", "subtasks": sorted(subs),
            "left_out": {k: sorted(m for m in res[k] if "," in m and not m.endswith("_stderr,none"))
                         for k in left_out}}


def lm_eval_metric(results: dict[str, Any], task: str, key: str = "acc,none") -> float:
    try:
        return float(results[task][key])
    except (KeyError, TypeError, ValueError) as exc:
        raise ScoreError(f"lm-eval gave no {key} for {task}") from exc

