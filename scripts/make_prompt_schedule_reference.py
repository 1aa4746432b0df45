#!/usr/bin/env python3
"""Record A1111's prompt-editing schedules for hiresfix's prompt_schedule tests.

    pip install lark          # A1111's parser library (lark 1.x; recorded in the JSON)
    python3 scripts/make_prompt_schedule_reference.py [--out tests/data/prompt_schedule/reference.json]

`schedules()` below is a transcription of A1111 1.10's
`modules/prompt_parser.py:get_learned_conditioning_prompt_schedules` (the same lark grammar,
the same CollectSteps visitor and AtStep transformer, the hires rule with `hires_steps`, and
`use_old_scheduling`). It runs over:

  * CASES: hand-picked prompts (nested edits, alternation incl. empty alternatives, weights,
    escapes, numbers as fractions, absolute steps and exponents, BREAK, unbalanced brackets,
    whitespace around numbers) at several step counts, with and without a hires pass's own
    steps;
  * RANDOM: prompts drawn (fixed seed) from an alphabet of the grammar's special characters,
    so the recursive-descent parser in Rust is compared with lark's Earley parser on inputs
    nobody would write by hand.

Each record is {prompt, steps, hires_steps, old, schedule: [[end_at_step, text], ...]}, where
`steps` is A1111's `base_steps` (a first pass's steps times the sampler's step multiplier) and
`hires_steps` the hires pass's own (null: a first pass). A prompt A1111 cannot schedule (an
`int(inf)` overflow) is recorded with schedule null.
"""

from __future__ import annotations

import argparse
import json
import os
import random

import lark

# The grammar of A1111 1.10 modules/prompt_parser.py, verbatim.
schedule_parser = lark.Lark(r"""
!start: (prompt | /[][():]/+)*
prompt: (emphasized | scheduled | alternate | plain | WHITESPACE)*
!emphasized: "(" prompt ")"
        | "(" prompt ":" prompt ")"
        | "[" prompt "]"
scheduled: "[" [prompt ":"] prompt ":" [WHITESPACE] NUMBER [WHITESPACE] "]"
alternate: "[" prompt ("|" [prompt])+ "]"
WHITESPACE: /\s+/
plain: /([^\\\[\]():|]|\\.)+/
%import common.SIGNED_NUMBER -> NUMBER
""")


def schedules(prompts, base_steps, hires_steps=None, use_old_scheduling=False):
    """A1111's get_learned_conditioning_prompt_schedules, transcribed."""
    if hires_steps is None or use_old_scheduling:
        int_offset = 0
        flt_offset = 0
        steps = base_steps
    else:
        int_offset = base_steps
        flt_offset = 1.0
        steps = hires_steps

    def collect_steps(steps, tree):
        res = [steps]

        class CollectSteps(lark.Visitor):
            def scheduled(self, tree):
                s = tree.children[-2]
                v = float(s)
                if use_old_scheduling:
                    v = v * steps if v < 1 else v
                else:
                    if "." in s:
                        v = (v - flt_offset) * steps
                    else:
                        v = v - int_offset
                tree.children[-2] = min(steps, int(v))
                if tree.children[-2] >= 1:
                    res.append(tree.children[-2])

            def alternate(self, tree):
                res.extend(range(1, steps + 1))

        CollectSteps().visit(tree)
        return sorted(set(res))

    def at_step(step, tree):
        class AtStep(lark.Transformer):
            def scheduled(self, args):
                before, after, _, when, _ = args
                yield before or () if step <= when else after

            def alternate(self, args):
                args = ["" if not arg else arg for arg in args]
                yield args[(step - 1) % len(args)]

            def start(self, args):
                def flatten(x):
                    if isinstance(x, str):
                        yield x
                    else:
                        for gen in x:
                            yield from flatten(gen)

                return "".join(flatten(args))

            def plain(self, args):
                yield args[0].value

            def __default__(self, data, children, meta):
                for child in children:
                    yield child

        return AtStep().transform(tree)

    def get_schedule(prompt):
        try:
            tree = schedule_parser.parse(prompt)
        except lark.exceptions.LarkError:
            return [[steps, prompt]]
        return [[t, at_step(t, tree)] for t in collect_steps(steps, tree)]

    promptdict = {prompt: get_schedule(prompt) for prompt in set(prompts)}
    return [promptdict[prompt] for prompt in prompts]


# (prompt, [(base_steps, hires_steps), ...])
FIRST = [(10, None), (20, None), (7, None)]
HIRES = [(20, 10), (12, 4), (40, 30)]
CASES = [
    ("test", FIRST),
    ("a [b:3]", FIRST),
    ("a [b: 3]", FIRST),
    ("a [b:3 ]", FIRST),
    ("a [[[b]]:2]", FIRST),
    ("[(a:2):3]", FIRST),
    ("a [b : c : 1] d", FIRST),
    ("a[b:[c:d:2]:1]e", FIRST),
    ("a [unbalanced", FIRST),
    ("a [b:.5] c", FIRST + HIRES),
    ("a [{b|d{:.5] c", FIRST),
    ("((a][:b:c [d:3]", FIRST),
    ("[a|(b:1.1)]", FIRST),
    ("[fe|]male", FIRST),
    ("[fe|||]male", FIRST),
    ("a [b:1.5] c", FIRST + HIRES),
    ("a red [dog:fox:0.5] in a field", FIRST + HIRES),
    ("[red:blue:0.5]", FIRST + HIRES + [(12, None), (6, None), (6, 4), (12, 8)]),
    ("[red|blue]", FIRST + HIRES + [(6, None), (12, None), (6, 4)]),
    ("[ugly::3]", FIRST + HIRES + [(12, None), (12, 4)]),
    ("[red|blue], [ugly::0.25]", [(12, None), (12, 4)]),
    ("[red:blue:1.0]", FIRST + HIRES),
    ("[red:blue:1]", FIRST + HIRES),
    ("[red:blue:15]", FIRST + HIRES),
    ("[red:blue:25]", HIRES),
    ("[red:blue:0]", FIRST + HIRES),
    ("[red:blue:-2]", FIRST + HIRES),
    ("[red:blue:+4]", FIRST),
    ("[red:blue:1e1]", FIRST + HIRES),
    ("[red:blue:2.5e-1]", FIRST + HIRES),
    ("[red:blue:1.]", FIRST),
    ("[red:blue:0.999]", FIRST),
    ("[red:blue:3.7]", FIRST),
    ("[red:blue:0.3]", [(10, None), (30, None), (7, None)]),
    ("[red:blue:0.7]", [(10, None), (30, None), (7, None)]),
    ("fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75][ in foreground::0.6][ in background:0.25] [shoddy:masterful:0.5]", [(100, None), (20, None), (20, 10)]),
    ("(masterpiece:1.2), [cat|dog|(fox:1.3)] on a [red:(blue:1.4):0.4], [[sky]]", FIRST + HIRES),
    ("a [cat:[dog|fox]:0.5] and [[big|small]:[red|green|blue]:4]", FIRST + HIRES),
    ("[[a|b]|[c|d|e]]", FIRST),
    ("[a:[b:[c:d:6]:4]:2]", FIRST + HIRES),
    ("[[a:b:2]:[c:d:8]:5]", FIRST),
    ("castle BREAK [knight:dragon:0.5] BREAK sky", FIRST + HIRES),
    ("[knight BREAK rider|dragon]", FIRST),
    ("a \\[not:edited:0.5\\] prompt", FIRST),
    ("a \\(x\\) [y:z:2] \\\\", FIRST),
    ("a [y:z:2] \\", FIRST),
    ("a | b [c:d:2]", FIRST),
    ("[a|b", FIRST),
    ("a [b:c:d] e", FIRST),
    ("a (b:c:d) [e:f:2]", FIRST),
    ("[[a:1]", FIRST),
    ("[[a:1]]", FIRST),
    ("((a:1.2)) [b:c:3]", FIRST),
    ("(a [b:c:3] d:1.3)", FIRST),
    ("[a (b:1.2):c:0.5]", FIRST),
    ("a [b:c:0.5 ]", FIRST),
    ("a [b:c: 0.5]", FIRST),
    ("a [b:c:0.5x]", FIRST),
    ("[|]", FIRST),
    ("[]", FIRST),
    ("[:2]", FIRST),
    ("[::2]", FIRST),
    ("[a::0.5]", FIRST + HIRES),
    ("[:a:0.5]", FIRST + HIRES),
    ("<lora:x:0.5> [a:b:0.5]", FIRST),
    ("line one\n[a:b:2]\nline\ttwo", FIRST),
    ("café [naïve:résumé:0.5] 🙂", FIRST),
    ("a [b:c:1e999]", []),  # int(inf): A1111 raises OverflowError
]

ALPHABET = ["a", "b", " ", ":", "|", "[", "]", "(", ")", "1", ".", "5", "\\", "2", "x"]
RANDOM_COUNT = 400
RANDOM_SEED = 20261207


def random_prompts() -> list[str]:
    rng = random.Random(RANDOM_SEED)
    out = []
    for _ in range(RANDOM_COUNT):
        n = rng.randint(1, 14)
        out.append("".join(rng.choice(ALPHABET) for _ in range(n)))
    return out


def record(prompt: str, steps: int, hires, old: bool = False) -> dict:
    try:
        sched = schedules([prompt], steps, hires, old)[0]
    except OverflowError:
        sched = None
    return {"prompt": prompt, "steps": steps, "hires_steps": hires, "old": old, "schedule": sched}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/data/prompt_schedule/reference.json")
    args = ap.parse_args()
    records = []
    for prompt, step_list in CASES:
        for steps, hires in step_list or [(10, None)]:
            records.append(record(prompt, steps, hires))
    # use_old_scheduling (A1111's compatibility option) for a few, so a change of rule shows
    for prompt in ["[red:blue:0.5]", "a [b:1.5] c", "[red:blue:15]", "[red:blue:1.0]"]:
        records.append(record(prompt, 20, 10, True))
    for prompt in random_prompts():
        for steps, hires in [(5, None), (8, 3)]:
            records.append(record(prompt, steps, hires))
    doc = {
        "generator": "scripts/make_prompt_schedule_reference.py",
        "source": "A1111 1.10 modules/prompt_parser.py get_learned_conditioning_prompt_schedules (transcribed)",
        "lark": lark.__version__,
        "records": records,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    # One record a line: small, and a change of rule shows as a line in a diff.
    head = json.dumps({k: v for k, v in doc.items() if k != "records"}, ensure_ascii=False)[:-1]
    lines = [json.dumps(r, ensure_ascii=False, separators=(",", ":")) for r in records]
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(head + ', "records": [\n' + ",\n".join(lines) + "\n]}\n")
    scheduled = sum(1 for r in records if r["schedule"] and len(r["schedule"]) > 1)
    print(f"wrote {len(records)} records ({scheduled} with more than one segment) to {args.out}")


if __name__ == "__main__":
    main()
