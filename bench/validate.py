"""Benchmark: the full check set of the validate stage on synthetic rationales, on one core.

Prints ONE JSON line: samples/s of the per-record checks (parse + format, emotion, AUs, hedging, length,
AU<->emotion consistency), of the template-collapse passes (sketch + exact count), and of both together.
Usage: ``python bench/validate.py [--n 100000] [--seed 0]``. Target: >= 20,000 samples/s.
"""

from __future__ import annotations

import argparse
import json
import random
import time

from fea20k.record import FaceRecord
from fea20k.validate.checks import check_text, default_ruleset
from fea20k.validate.stage import TemplateCounter, template_key
from fea20k.vocab import load_vocab


MOVES = {1: "inner brows raised", 2: "outer brows raised", 4: "brows drawn together and lowered",
         5: "upper lids raised", 6: "cheeks raised", 7: "lids tightened", 9: "nose wrinkled",
         10: "upper lip raised", 12: "lip corners pulled up", 15: "lip corners pulled down", 17: "chin raised",
         20: "lips stretched", 23: "lips tightened", 25: "lips parted", 26: "jaw dropped"}
OPENERS = ["The face shows", "In this image we see", "Looking at the face,", "The expression has",
           "Several facial movements are visible:", "Observing the eyes and mouth, there are"]
CLOSERS = ["Together these cues indicate {e}.", "This combination is typical of {e}.",
           "Overall the configuration points to {e}.", "These movements are characteristic of {e}."]


def synth(n: int, seed: int) -> list[tuple[str, FaceRecord]]:
    """n (text, record) pairs: half emotion-only (RAF-DB-like), half AU-coded (DISFA-like), ~15 % flawed."""
    rng = random.Random(seed)
    vocab = load_vocab()
    emotions = [e for e in vocab.emotions if e != "contempt"]
    coded = [1, 2, 4, 5, 6, 9, 12, 15, 17, 20, 25, 26]
    out = []
    for i in range(n):
        if i % 2 == 0:
            emo = rng.choice(emotions)
            core, opt = vocab.prototypes[emo]
            aus = sorted(core | {a for a in opt if rng.random() < 0.5}) or [25]
            rec = FaceRecord(id=f"raf/{i}", source="rafdb", emotion=emo, emotion_origin="gt")
        else:
            present = set(rng.sample(coded, rng.randint(1, 4)))
            rec = FaceRecord(id=f"disfa/{i}", source="disfa", aus={a: int(a in present) for a in coded},
                             au_coded=coded, aus_origin="gt")
            aus = sorted(present)
            emo = rng.choice(emotions)
        r = rng.random()
        if r < 0.05:
            aus = aus + [rng.choice(coded)]  # hallucination
        elif r < 0.08 and len(aus) > 1:
            aus = aus[1:]  # a missed AU
        parts = [f"{MOVES.get(a, 'a movement')} (AU{a})" for a in aus]
        think = (f"{rng.choice(OPENERS)} {', '.join(parts)}. " + rng.choice(CLOSERS).format(e=emo)
                 + (" Perhaps it is subtle." if r > 0.97 else "") + f" (sample {i % 997})")
        answer = emo if r < 0.95 else emo.capitalize()
        out.append((f"<think>{think}</think>\n<answer>{answer}</answer>", rec))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rules = default_ruleset()
    data = synth(args.n, args.seed)
    check_text(data[0][0], data[0][1], rules)  # warm caches

    t0, c0 = time.perf_counter(), time.process_time()
    passed = 0
    for text, rec in data:
        passed += check_text(text, rec, rules).passed
    t_checks, c_checks = time.perf_counter() - t0, time.process_time() - c0

    t0, c0 = time.perf_counter(), time.process_time()
    counter = TemplateCounter(rules.template.max_repeats)
    keys = [template_key(text) for text, _ in data]
    counter.add_sketch(keys)
    counter.add_exact([template_key(text) for text, _ in data])
    t_template, c_template = time.perf_counter() - t0, time.process_time() - c0

    total = t_checks + t_template
    print(json.dumps({
        "bench": "validate", "samples": args.n, "cores": 1,
        "checks_samples_per_s": round(args.n / t_checks),
        "template_samples_per_s": round(args.n / t_template),
        "samples_per_s": round(args.n / total),
        "seconds": round(total, 3),
        # CPU time of this process: close to the idle-machine figure when other processes share the core
        "samples_per_cpu_s": round(args.n / (c_checks + c_template)),
        "checks_samples_per_cpu_s": round(args.n / c_checks),
        "template_samples_per_cpu_s": round(args.n / c_template), "accepted_fraction": round(passed / args.n, 4),
        "templates_collapsed": counter.collapsed, "target_samples_per_s": 20_000,
    }))


if __name__ == "__main__":
    main()
