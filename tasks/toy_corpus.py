"""A small deterministic toy language for smoke-scale task data.

Smoke runs must train in a minute on two CPU cores, with nothing downloaded, and still
give a score that means something. So every smoke dataset is drawn from one toy world:
sentences with number agreement (learnable by a tiny model in a few hundred steps, so
BLiMP-style minimal pairs and SuperGLUE-style choices rise above chance), facts about
made-up creatures (knowledge that MMLU-style questions probe), and natural-language
theorems with their Lean 3 forms (autoformalization). Tokens are separated by single
spaces, so a whitespace tokenizer covers the language exactly.

Pure Python, standard library only: prepare scripts and the scorer-data generator use it.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

NOUNS = [("cat", "cats"), ("dog", "dogs"), ("bird", "birds"), ("fox", "foxes"),
         ("child", "children"), ("farmer", "farmers"), ("teacher", "teachers"),
         ("horse", "horses"), ("mouse", "mice"), ("girl", "girls")]
VERBS_T = [("sees", "see"), ("likes", "like"), ("chases", "chase"), ("finds", "find"),
           ("helps", "help"), ("follows", "follow")]
VERBS_I = [("runs", "run"), ("sleeps", "sleep"), ("sings", "sing"), ("waits", "wait"),
           ("jumps", "jump")]
ADJS = ["small", "big", "red", "old", "happy", "quiet", "young"]
PREPS = ["near", "behind", "with"]
DET_SG = ["the", "a", "every", "this"]
DET_PL = ["the", "some", "many", "these"]
DET_ONLY_SG = ["a", "every", "this"]
DET_ONLY_PL = ["some", "many", "these"]

CREATURES = ["zib", "mork", "tal", "quen", "bax", "lorp", "fenn", "gruk", "wim", "dax",
             "pell", "snor", "vik", "yarl", "hoob", "trin"]
HOMES = ["barn", "cave", "river", "tower", "forest", "meadow"]
FOODS = ["apples", "fish", "seeds", "honey", "grass", "bread"]
COLORS = ["red", "blue", "green", "gray", "gold", "white"]
ATTRIBUTES = {"home": HOMES, "food": FOODS, "color": COLORS}


def facts() -> dict[str, dict[str, str]]:
    """The toy world's knowledge: one home, food and colour per creature (fixed forever)."""
    rng = random.Random(1234)
    return {c: {a: rng.choice(opts) for a, opts in ATTRIBUTES.items()} for c in CREATURES}


def fact_sentence(creature: str, attr: str, value: str) -> str:
    if attr == "home":
        return f"the {creature} lives in the {value} ."
    if attr == "food":
        return f"the {creature} eats {value} ."
    return f"the {creature} is {value} ."


def fact_question(creature: str, attr: str) -> tuple[str, str]:
    """(question, answer prefix) for the held-out MMLU-style phrasing."""
    if attr == "home":
        return f"question : where does the {creature} live ? answer :", "the "
    if attr == "food":
        return f"question : what does the {creature} eat ? answer :", ""
    return f"question : what color is the {creature} ? answer :", ""


def instruction_pairs() -> list[dict[str, str]]:
    """Dolly-style instruction data that teaches the facts in other words than the test."""
    out: list[dict[str, str]] = []
    for c, attrs in facts().items():
        for a, v in attrs.items():
            ask = {"home": f"tell me where the {c} lives .",
                   "food": f"tell me what the {c} eats .",
                   "color": f"tell me the color of the {c} ."}[a]
            out.append({"instruction": ask, "response": fact_sentence(c, a, v)})
    return out


def _np(rng: random.Random, plural: bool, det_pool: list[str] | None = None) -> str:
    sg, pl = rng.choice(NOUNS)
    det = rng.choice(det_pool or (DET_PL if plural else DET_SG))
    adj = f" {rng.choice(ADJS)}" if rng.random() < 0.3 else ""
    return f"{det}{adj} {pl if plural else sg}"


def _parts(rng: random.Random) -> dict[str, Any]:
    plural = rng.random() < 0.5
    subj = _np(rng, plural)
    attractor = ""
    if rng.random() < 0.35:
        attractor = f" {rng.choice(PREPS)} {_np(rng, rng.random() < 0.5)}"
    if rng.random() < 0.6:
        v = rng.choice(VERBS_T)
        obj = " " + _np(rng, rng.random() < 0.5)
    else:
        v = rng.choice(VERBS_I)
        obj = ""
    return {"plural": plural, "subj": subj, "attr": attractor, "verb": v, "obj": obj}


def _render(p: dict[str, Any], wrong: bool = False) -> str:
    sg, pl = p["verb"]
    use_pl = p["plural"] != wrong
    return f"{p['subj']}{p['attr']} {pl if use_pl else sg}{p['obj']} ."


def sentences(n: int, seed: int) -> list[str]:
    """Grammatical sentences of the toy language, with a fact sentence now and then."""
    rng = random.Random(seed)
    known = facts()
    out: list[str] = []
    for _ in range(n):
        if rng.random() < 0.1:
            c = rng.choice(CREATURES)
            a = rng.choice(list(ATTRIBUTES))
            out.append(fact_sentence(c, a, known[c][a]))
        else:
            out.append(_render(_parts(rng)))
    return out


def minimal_pairs(n: int, seed: int) -> list[dict[str, str]]:
    """BLiMP-style pairs: the same sentence, grammatical and with one agreement error."""
    rng = random.Random(seed)
    out: list[dict[str, str]] = []
    while len(out) < n:
        kind = rng.choice(["subject_verb", "attractor", "determiner_noun"])
        if kind == "determiner_noun":
            plural = rng.random() < 0.5
            sg, pl = rng.choice(NOUNS)
            det = rng.choice(DET_ONLY_PL if plural else DET_ONLY_SG)
            vsg, vpl = rng.choice(VERBS_I)
            good = f"{det} {pl if plural else sg} {vpl if plural else vsg} ."
            bad = f"{det} {sg if plural else pl} {vpl if plural else vsg} ."
        else:
            p = _parts(rng)
            if kind == "attractor" and not p["attr"]:
                p["attr"] = f" {rng.choice(PREPS)} {_np(rng, not p['plural'])}"
            good, bad = _render(p), _render(p, wrong=True)
        out.append({"phenomenon": kind, "good": good, "bad": bad})
    return out


def choice_items(n: int, seed: int) -> list[dict[str, Any]]:
    """SuperGLUE-style multiple choice: pick the continuation that fits the premise (number
    agreement, or recall of a fact the corpus states)."""
    rng = random.Random(seed)
    known = facts()
    out: list[dict[str, Any]] = []
    for _ in range(n):
        if rng.random() < 0.5:
            # recall: which ending states the toy world's fact
            c = rng.choice(CREATURES)
            a = rng.choice(list(ATTRIBUTES))
            v = known[c][a]
            stem = fact_sentence(c, a, "@").split(" @")[0]
            options = [v, *rng.sample([o for o in ATTRIBUTES[a] if o != v], 3)]
            rng.shuffle(options)
            out.append({"context": stem, "choices": [o + " ." for o in options],
                        "label": options.index(v)})
            continue
        p = _parts(rng)
        context = f"{p['subj']}{p['attr']}"
        sg, pl = p["verb"]
        right = f"{pl if p['plural'] else sg}{p['obj']} ."
        wrong = f"{sg if p['plural'] else pl}{p['obj']} ."
        choices = [right, wrong]
        rng.shuffle(choices)
        out.append({"context": context, "choices": choices, "label": choices.index(right)})
    return out


def knowledge_items() -> list[dict[str, Any]]:
    """MMLU-style four-way questions over every fact of the toy world."""
    rng = random.Random(99)
    out: list[dict[str, Any]] = []
    for c, attrs in facts().items():
        for a, v in attrs.items():
            question, prefix = fact_question(c, a)
            others = [o for o in ATTRIBUTES[a] if o != v]
            choices = [v, *rng.sample(others, 3)]
            rng.shuffle(choices)
            out.append({"subject": a, "context": question,
                        "choices": [prefix + x for x in choices], "label": choices.index(v)})
    return out


_THEOREMS = [
    ("for all natural numbers {a} and {b} , {a} + {b} = {b} + {a} .",
     "proof : by commutativity of addition .",
     "theorem {t} ({a} {b} : ℕ) : {a} + {b} = {b} + {a} := nat.add_comm {a} {b}"),
    ("for all natural numbers {a} and {b} , {a} * {b} = {b} * {a} .",
     "proof : by commutativity of multiplication .",
     "theorem {t} ({a} {b} : ℕ) : {a} * {b} = {b} * {a} := nat.mul_comm {a} {b}"),
    ("for every natural number {a} , {a} + 0 = {a} .",
     "proof : zero is the additive identity .",
     "theorem {t} ({a} : ℕ) : {a} + 0 = {a} := nat.add_zero {a}"),
    ("for every natural number {a} , {a} * 1 = {a} .",
     "proof : one is the multiplicative identity .",
     "theorem {t} ({a} : ℕ) : {a} * 1 = {a} := nat.mul_one {a}"),
    ("for all natural numbers {a} {b} and {c} , ( {a} + {b} ) + {c} = {a} + ( {b} + {c} ) .",
     "proof : by associativity of addition .",
     "theorem {t} ({a} {b} {c} : ℕ) : {a} + {b} + {c} = {a} + ({b} + {c}) := nat.add_assoc {a} {b} {c}"),
    ("for every real number {a} , {a} ≤ {a} .",
     "proof : the order is reflexive .",
     "theorem {t} ({a} : ℝ) : {a} ≤ {a} := le_refl {a}"),
    ("for all real numbers {a} and {b} , {a} + {b} = {b} + {a} .",
     "proof : by commutativity of addition .",
     "theorem {t} ({a} {b} : ℝ) : {a} + {b} = {b} + {a} := add_comm {a} {b}"),
]
_VARS = ["a", "b", "c", "x", "y", "z", "m", "n", "p", "q"]


def autoformalization(n: int, seed: int) -> list[dict[str, str]]:
    """Natural-language statement and proof -> Lean 3, as in AI4Math track 1-1."""
    rng = random.Random(seed)
    out: list[dict[str, str]] = []
    for i in range(n):
        nl, proof, lean = rng.choice(_THEOREMS)
        a, b, c = rng.sample(_VARS, 3)
        name = f"thm_{seed}_{i}"
        fill = {"a": a, "b": b, "c": c, "t": name}
        out.append({"name": name,
                    "informal": f"theorem {name} : {nl.format(**fill)} {proof}",
                    "formal": lean.format(**fill)})
    return out


def words(lines: Iterator[str] | list[str]) -> int:
    return sum(len(line.split()) for line in lines)
