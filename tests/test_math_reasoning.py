"""math_reasoning: its full held-out set is a scorer-only asset the agent's mounts never hold,
the Lean check is named for what ran (a compile needs Lean 3 with mathlib), and BLEU and
ROUGE-L are computed as sacrebleu and rouge-score compute them."""

from __future__ import annotations

import json
import math
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from runner.assets import AssetStore, asset_mounts, task_assets
from tasks import scorelib as sl
from tasks.api import SCORELIB, load_task, parse_score_output, score_command
from tests.hub_server import StandInHub

SPEC = load_task("math_reasoning")
PROOFNET_ROWS = [
    {"id": "Rudin|exercise_1_1a", "nl_statement": "If r is rational and x is irrational, prove that r + x is irrational.",
     "nl_proof": "If r and r + x were both rational, then x = r + x - r would also be rational.",
     "formal_statement": "theorem exercise_1_1a (x : ℝ) (y : ℚ) : ( irrational x ) -> irrational ( x + y ) :=",
     "src_header": "import data.real.irrational\nopen real\n"},
    {"id": "Rudin|exercise_1_2", "nl_statement": "Prove that there is no rational number whose square is 12.",
     "nl_proof": "Suppose q is rational with q ^ 2 = 12; then ...",
     "formal_statement": "theorem exercise_1_2 : ¬ ∃ (x : ℚ), ( x ^ 2 = 12 ) :=",
     "src_header": "import data.rat.basic\n"},
]


def test_bleu_and_rouge_l_match_their_reference_computations_by_hand() -> None:
    # four n-gram precisions 5/6, 3/5, 2/4, 1/3, equal lengths: 100 * (1/12) ** (1/4)
    assert sl.bleu_exact(["the cat sat on the mat"], ["the cat sat on a mat"]) == pytest.approx(100 * (1 / 12) ** 0.25)
    # no 4-gram matches: sacrebleu's exponential smoothing counts it as 1 / (2 * 1)
    assert sl.bleu_exact(["a b c d"], ["a b c e"]) == pytest.approx(100 * (0.75 * (2 / 3) * 0.5 * 0.5) ** 0.25)
    assert sl.bleu_exact(["a b c"], ["a b c"]) == pytest.approx(0.0, abs=1e-6)  # no 4-grams at all
    short = sl.bleu_exact(["the cat sat on"], ["the cat sat on the mat"])
    assert short == pytest.approx(100 * math.exp(1 - 6 / 4))  # the brevity penalty, all precisions 1
    assert sl.tokenize_13a("n+1=2, so (n:ℕ).") == ["n", "+", "1", "=", "2", ",", "so", "(", "n", ":", "ℕ", ")", "."]
    assert sl.rouge_l_exact(["The cat sat"], ["the cat is here"]) == pytest.approx(4 / 7)
    assert sl.rouge_tokens("theorem t (n : ℕ) : n = n := rfl") == ["theorem", "t", "n", "n", "n", "rfl"]
    value, impl = sl.bleu(["the cat sat on the mat"], ["the cat sat on a mat"])
    try:
        import sacrebleu  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        assert impl == "scorelib (sacrebleu's computation)"
    assert value == pytest.approx(53.7284965911771, abs=0.01)


def _fake_lean(folder: Path, version: str, paths: list[str]) -> None:
    """A `lean` that answers --version and --path, and "compiles" a file iff it holds its imports:
    it stands in for a Lean 3 toolchain with mathlib, which cannot be installed offline here."""
    folder.mkdir(parents=True, exist_ok=True)
    exe = folder / "lean"
    exe.write_text(f"""#!{sys.executable}
import json, os, sys
if sys.argv[1] == "--version":
    print("Lean (version {version}, commit 0000, Release)")
elif sys.argv[1] == "--path":
    print(json.dumps({{"path": {paths!r}}}))
else:
    text = open(sys.argv[1]).read()
    ok = text.startswith("import ") and "mathlib" in os.environ["LEAN_PATH"] and "sorry" not in text
    print("" if ok else sys.argv[1] + ":1:0: error: unknown identifier")
    sys.exit(0 if ok else 1)
""")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)


def test_a_compile_is_claimed_only_with_lean_3_and_mathlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", f"{tmp_path / 'none'}{os.pathsep}/usr/bin{os.pathsep}/bin")
    assert sl.lean3_toolchain() == (None, "no `lean` on the scorer's PATH")
    _fake_lean(tmp_path / "lean4", "4.9.0", [])
    monkeypatch.setenv("PATH", f"{tmp_path / 'lean4'}{os.pathsep}/usr/bin{os.pathsep}/bin")
    lean, why = sl.lean3_toolchain()
    assert lean is None and why.startswith("`lean` is not Lean 3 (Lean (version 4.9.0")
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.setenv("MLRB_LEAN3_PROJECT", str(project))
    _fake_lean(tmp_path / "lean3", "3.51.1", [str(project / "_target/deps/core/library")])
    monkeypatch.setenv("PATH", f"{tmp_path / 'lean3'}{os.pathsep}/usr/bin{os.pathsep}/bin")
    assert sl.lean3_toolchain() == (None, f"no leanpkg project at {project} (set MLRB_LEAN3_PROJECT)")
    (project / "leanpkg.toml").write_text('[package]\nname = "check"\n[dependencies]\n')
    assert sl.lean3_toolchain()[1] == f"the project at {project} does not depend on mathlib"
    _fake_lean(tmp_path / "lean3", "3.51.1", [str(project / "_target/deps/mathlib/src")])
    lean, why = sl.lean3_toolchain()
    assert lean is not None and why == "" and lean.version == "3.51.1"
    assert lean.compile("theorem t : 1 = 1 := rfl", "import data.nat.basic")[0] is True
    assert lean.compile("theorem t : 1 = 1 := rfl")[0] is False  # without its row's imports
    ok, output = sl.lean_compile("theorem t : 1 = 1 := sorry") or (True, "")
    assert ok is False and "error: unknown identifier" in output


@pytest.fixture
def staged(tmp_path: Path) -> tuple[Path, AssetStore]:
    """math_reasoning's own declarations, each staged from a stand-in hub with tiny files."""
    hub = StandInHub().start()
    try:
        hub.add("dataset", "AlgorithmicResearchGroup/math_reasoning_autoformalization_track",
                {"data/train.jsonl": b'{"name": "t", "informal_statement": "s", "informal_proof": "p", "formal_proof": "f"}\n'})
        hub.add("model", "google/flan-t5-base", {"config.json": b'{"model_type": "t5"}', "model.safetensors": b"0" * 64},
                lfs=("model.safetensors",))
        hub.add("dataset", "hoskinson-center/proofnet", {
            "test.jsonl": "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in PROOFNET_ROWS).encode(),
            "README.md": b"# ProofNet", "proofnet.py": b"# a loading script, not staged"})
        home = tmp_path / "home"
        store = AssetStore(home, endpoint=hub.url)
        store.fetch(task_assets([SPEC], "full"))
    finally:
        hub.stop()
    return home, store


def test_the_full_heldout_set_is_for_the_scorer_only(staged: tuple[Path, AssetStore]) -> None:
    home, store = staged
    held = [a for a in SPEC.assets if a.repo == "hoskinson-center/proofnet"]
    assert [(a.audience, a.scales) for a in held] == [("scorer", ("full",))]
    agent = asset_mounts(SPEC, "full", home)
    scorer = asset_mounts(SPEC, "full", home, audience="scorer")
    assert not any("proofnet" in str(host) or "proofnet" in inside for host, inside in agent)
    # the agent's side only: its hub cache and its datasets' load_dataset caches
    assert all(store.root / "agent" in host.parents for host, _inside in agent)
    held_mount = [m for m in scorer if "proofnet" in m[1]]
    # its hub snapshot, and the load_dataset cache built from it: both on the scorer's side
    assert [store.hub_dir("scorer") in m[0].parents for m in held_mount].count(True) == 1
    assert held_mount and all(store.root / "scorer" in m[0].parents for m in held_mount)
    assert "proofnet" not in SPEC.prompt("full")


def _tiny_seq2seq(dest: Path) -> None:
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    from tasks import base_models

    tok = base_models.tokenizer()
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(T5Config(
        vocab_size=len(tok), d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=2,
        decoder_start_token_id=tok.pad_token_id, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id))
    base_models.save(model, tok, dest)


def test_full_scale_scoring_reads_proofnet_from_the_scorers_cache_and_names_its_check(
        staged: tuple[Path, AssetStore], tmp_path: Path) -> None:
    home, _store = staged
    view = tmp_path / "hub"  # what the scorer's sandbox sees at HF_HUB_CACHE: its mounts
    view.mkdir()
    for host, inside in asset_mounts(SPEC, "full", home, audience="scorer"):
        (view / Path(inside).name).symlink_to(host)
    ws = tmp_path / "ws"
    _tiny_seq2seq(ws / "model")
    argv = score_command(SPEC, "full", "model", str(ws), str(SPEC.scorer_dir), str(SCORELIB.parent))
    env = {**os.environ, "HF_HUB_CACHE": str(view), "HF_HUB_OFFLINE": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}/usr/bin{os.pathsep}/bin"}
    out = parse_score_output(subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env).stdout)
    assert out["error"] is None, out
    d = out["details"]
    assert d["items"] == len(PROOFNET_ROWS) and d["heldout"] == "hoskinson-center/proofnet test.jsonl"
    assert d["checker"] == "lean3-syntax" and "compile_rate" not in out["metrics"]
    assert d["checker_note"] == "a Lean 3 syntax check, not a compile: no `lean` on the scorer's PATH"
    assert out["metrics"]["syntax_rate"] == out["value"] == out["metrics"]["lean_check_rate"]
    assert {"bleu", "rouge_l"} <= set(out["metrics"]) and 0 <= out["metrics"]["bleu"] <= 100
    assert [e["reference"] for e in d["examples"]] == [r["formal_statement"] for r in PROOFNET_ROWS]
    # the agent's side: the same cache without the scorer's mounts has no held-out set
    agent_view = tmp_path / "agent_hub"
    agent_view.mkdir()
    for host, inside in asset_mounts(SPEC, "full", home):
        (agent_view / Path(inside).name).symlink_to(host)
    blind = parse_score_output(subprocess.run(argv, capture_output=True, text=True, timeout=600,
                                              env={**env, "HF_HUB_CACHE": str(agent_view)}).stdout)
    assert blind["value"] == 0.0 and "hoskinson-center/proofnet: test.jsonl is not staged" in blind["error"]


def test_the_own_computations_equal_sacrebleu_and_rouge_score_where_installed() -> None:
    sacrebleu = pytest.importorskip("sacrebleu")
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    import random

    rng = random.Random(0)
    words = "theorem t (n : ℕ) : n + 0 = n := nat.add_zero n, 3.5 x-1 begin simp end".split()
    hyps = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 14))) for _ in range(30)]
    refs = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 14))) for _ in range(30)]
    assert sl.bleu_exact(hyps, refs) == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score, abs=1e-9)
    for h, r in zip(hyps, refs, strict=True):
        assert sl.bleu_exact([h], [r]) == pytest.approx(sacrebleu.corpus_bleu([h], [[r]]).score, abs=1e-9)
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    want = sum(scorer.score(r, h)["rougeL"].fmeasure for h, r in zip(hyps, refs, strict=True)) / len(hyps)
    assert sl.rouge_l_exact(hyps, refs) == pytest.approx(want, abs=1e-12)
