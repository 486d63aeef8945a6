"""TTE-Bench: a procedurally generated, deterministic, versioned multimodal reasoning benchmark.

Nine tasks mirror the MMEB meta-tasks (classification, VQA, retrieval, grounding, video, visual
documents) but every query needs a small reasoning step, so a gold chain-of-thought exists.
Nothing is downloaded: images are drawn with PIL and handwritten digits come from sklearn.

Each example is a pure function of (version, split, task, index): it is seeded with
``random.Random(f"{BENCH_VERSION}/{split}/{task}/{index}")`` (string seeds are stable across
processes, unlike hash()), and sklearn digit instances are partitioned by split as well.

Internally a task builder works on *facts* (hashable descriptions: a label string, a scene
tuple, a digit pair, a page), the shared pool builder picks 10 distinct facts with exactly one
satisfying the query, and only then are candidates rendered.
"""
from __future__ import annotations

import itertools
import random
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Iterable, Iterator

from . import render as R
from .render import ITEMS, SHAPES

BENCH_NAME = "tte-bench"
FRAMES_PER_SHOT = 2
BENCH_VERSION = "1.1"  # 1.1: each video digit is a shot of two frames (one temporal patch)
POOL_SIZE = 10
SPLITS = ("train", "val", "test")
DEFAULT_SIZES = {"test": 120, "val": 40}  # per task; train is endless and needs an explicit size
COLOR_NAMES = list(R.COLORS)
OBJECTS = [(c, s) for c in COLOR_NAMES for s in SHAPES]
_STREAM_STRIDE = 10**9  # train_stream(seed) reads train indices [seed * stride, ...): disjoint per seed

Input = dict  # {"text": str, "image": PIL.Image.Image, "video": list[PIL.Image.Image]}; unused keys absent


@dataclass
class Example:
    task: str
    query: Input
    cot: str  # gold chain-of-thought: intermediate facts, ending with the answer facts
    candidates: list[Input]  # exactly POOL_SIZE, shuffled deterministically
    target: int  # index of the single correct candidate
    hard_negatives: list[int]  # candidates differing from the target in the reasoning-relevant fact
    cand_ids: list[str]  # stable, unique within the pool
    meta: dict = field(default_factory=dict)  # facts needed to re-derive the answer (see builders)


@dataclass(frozen=True)
class TaskInfo:
    name: str
    family: str
    group: str
    query_modality: str
    target_modality: str
    description: str


TASKS = [
    TaskInfo("digit_sum", "classification", "image-CLS", "image+text", "text",
             "classify the sum of two handwritten digits"),
    TaskInfo("color_hop_vqa", "vqa", "image-QA", "image+text", "text",
             "name the object sharing its colour with the uniquely-shaped referenced object"),
    TaskInfo("count_vqa", "vqa", "image-QA", "image+text", "text",
             "count the objects of one colour in a scene"),
    TaskInfo("t2i_digits", "retrieval", "image-RET", "text", "image",
             "retrieve the digit pair given its sum and difference"),
    TaskInfo("i2t_count_caption", "retrieval", "image-RET", "image+text", "text",
             "retrieve the caption stating object count and majority colour"),
    TaskInfo("hop_grounding", "grounding", "image-VG", "image+text", "image",
             "select the crop of the object sharing its shape with the uniquely-coloured object"),
    TaskInfo("composed_edit", "composed_retrieval", "image-RET", "image+text", "image",
             "retrieve the scene after recolouring the named object"),
    TaskInfo("video_digit_qa", "video_qa", "video-QA", "video+text", "text",
             "sum the first and last digit of a 4-shot (8-frame) digit video"),
    TaskInfo("doc_table_ret", "doc_retrieval", "visdoc", "text", "image",
             "retrieve the table page where two named items sum to a value"),
]
TASK_NAMES = [t.name for t in TASKS]
TASK_GROUPS = {t.name: t.group for t in TASKS}  # task -> its MMEB meta-task

# Every token the benchmark can emit (texts are space-tokenised, punctuation included).
_WORDS = ("a and are as becomes caption classify colour count digit digits find first has how image "
          "is it last left make many minus most none object objects of other page plus right same "
          "select shape sum the there this two what where whose with").split()
VOCAB = sorted({*_WORDS, *COLOR_NAMES, *SHAPES, *ITEMS, *map(str, range(19)), ",", ".", "?", ":"})


# ---------------------------------------------------------------------------------------------
# Real digits, partitioned by split so test digit instances are never seen in training.

def digit_split(i: int) -> str:
    """Split owning sklearn digit sample `i`."""
    return {0: "test", 1: "val"}.get(i % 5, "train")


@lru_cache(maxsize=1)
def _digits():
    """(images, {split: [sample indices per label]}); loaded once, lazily (sklearn import is slow)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    by_split = {s: [[] for _ in range(10)] for s in SPLITS}
    for i, y in enumerate(d.target):
        by_split[digit_split(i)][int(y)].append(i)
    return d.images, by_split


class _Ctx:
    """Per-example randomness plus a record of the digit instances drawn (for auditing splits)."""

    def __init__(self, rng: random.Random, split: str):
        self.rng, self.split, self.digit_ids = rng, split, []

    def digit(self, d: int):
        images, by_split = _digits()
        i = self.rng.choice(by_split[self.split][d])
        self.digit_ids.append(i)
        return images[i]

    def pair(self, a: int, b: int):
        return R.render_digit_pair(self.digit(a), self.digit(b))

    def video(self, ds: Iterable[int]):
        """One shot of FRAMES_PER_SHOT identical frames per digit: Qwen-VL merges frames in temporal pairs,
        so a shot fills exactly one temporal patch instead of blending two digits in one."""
        return [frame for i, d in enumerate(ds)
                for frame in [R.render_digit_frame(self.digit(d), i)] * FRAMES_PER_SHOT]


# ---------------------------------------------------------------------------------------------
# Fact helpers shared by tasks.

def _place(rng: random.Random, objs) -> R.Scene:
    """Put objects in distinct random cells of the 3x3 grid."""
    slots = [None] * (R.GRID * R.GRID)
    for cell, obj in zip(rng.sample(range(len(slots)), len(objs)), objs):
        slots[cell] = obj
    return tuple(slots)


def _random_scene(rng: random.Random, lo: int, hi: int) -> R.Scene:
    return _place(rng, rng.sample(OBJECTS, rng.randint(lo, hi)))


def _objs(scene: R.Scene) -> list:
    return [o for o in scene if o is not None]  # reading (row-major) order


def _listed(scene: R.Scene) -> list:
    """Objects in canonical (colour, shape) order for captions and CoTs: naming a set of objects then
    needs no spatial readout, which a small model without absolute visual positions learns slowly."""
    return sorted(_objs(scene), key=lambda o: (COLOR_NAMES.index(o[0]), SHAPES.index(o[1])))


def _name(obj) -> str:
    return f"{obj[0]} {obj[1]}"


def _names(objs) -> str:
    return " , ".join(map(_name, objs))


def _page(rng: random.Random, pinned=()) -> R.Page:
    """A 3-row page with distinct items containing the `pinned` (item, value) rows."""
    used = [item for item, _ in pinned]
    rows = list(pinned) + [(it, rng.randint(1, 9)) for it in rng.sample([i for i in ITEMS if i not in used], 3 - len(pinned))]
    rng.shuffle(rows)
    return tuple(rows)


def _page_text(page: R.Page) -> str:
    return " , ".join(f"{item} {v}" for item, v in page)


def _labels(nums, hi: int) -> list[str]:
    return [str(n) for n in nums if 0 <= n <= hi]


def _hard(facts) -> list[tuple]:
    return [(f, True) for f in facts]


def _interleave(*lists) -> list:
    return [x for group in itertools.zip_longest(*lists) for x in group if x is not None]


# ---------------------------------------------------------------------------------------------
# Pool construction and candidate rendering (shared by all tasks).

@dataclass
class _Draft:
    query: Input
    cot: str
    target: object  # fact of the correct candidate
    distractors: list  # (fact, is_hard) in priority order
    fill: Callable[[random.Random], object]  # random distractor fact
    kind: str  # candidate renderer: text | scene | crop | pair | page
    meta: dict
    satisfies: Callable[[object], bool] | None = None  # needed when facts != target can still be correct


def _pool(rng: random.Random, d: _Draft) -> tuple[list, int, list[int]]:
    """Target + prioritised distractors + random fill -> (shuffled facts, target idx, hard idxs)."""
    facts, hard = [d.target], [False]

    def add(fact, is_hard):
        if len(facts) < POOL_SIZE and fact not in facts and not (d.satisfies and d.satisfies(fact)):
            facts.append(fact)
            hard.append(is_hard)

    for fact, is_hard in d.distractors:
        add(fact, is_hard)
    for _ in range(10_000):
        if len(facts) == POOL_SIZE:
            break
        add(d.fill(rng), False)
    else:
        raise RuntimeError("could not fill the candidate pool")
    if not any(hard):
        raise RuntimeError("pool has no hard negative")
    order = rng.sample(range(POOL_SIZE), POOL_SIZE)
    return [facts[i] for i in order], order.index(0), [j for j, i in enumerate(order) if hard[i]]


def _candidate(c: _Ctx, kind: str, fact) -> tuple[Input, str]:
    if kind == "text":
        return {"text": fact}, f"t:{fact}"
    if kind == "scene":
        code = ".".join(f"{o[0]}-{o[1]}" if o else "_" for o in fact)
        return {"image": R.render_scene(fact)}, f"img:scene:{code}"
    if kind == "crop":
        return {"image": R.render_crop(fact)}, f"img:crop:{fact[0]}-{fact[1]}"
    if kind == "pair":
        return {"image": c.pair(*fact)}, f"img:pair:{fact[0]}-{fact[1]}"
    if kind == "page":
        return {"image": R.render_page(fact)}, "img:page:" + ".".join(f"{i}-{v}" for i, v in fact)
    raise ValueError(f"unknown candidate kind {kind!r}")


# ---------------------------------------------------------------------------------------------
# Task builders: (ctx) -> _Draft. Each stores in meta what is needed to re-derive the answer.

def _digit_sum(c: _Ctx) -> _Draft:
    a, b = c.rng.randrange(10), c.rng.randrange(10)
    s = a + b
    return _Draft(
        query={"text": "classify the sum of the two digits", "image": c.pair(a, b)},
        cot=f"digits {a} {b} . {a} plus {b} is {s}",
        target=str(s), distractors=_hard(_labels([s - 1, s + 1, s - 2, s + 2, a, b], 18)),
        fill=lambda r: str(r.randint(0, 18)), kind="text", meta={"digits": (a, b)})


def _color_hop_vqa(c: _Ctx) -> _Draft:
    rng = c.rng
    colour = rng.choice(COLOR_NAMES)
    ref_shape, ans_shape = rng.sample(SHAPES, 2)
    ref, ans = (colour, ref_shape), (colour, ans_shape)
    # others: never the referenced shape, never the shared colour -> both hops are unique
    others = rng.sample([o for o in OBJECTS if o[0] != colour and o[1] != ref_shape], rng.randint(2, 5))
    scene = _place(rng, [ref, ans, *others])
    recoloured = [(x, ans_shape) for x in rng.sample(COLOR_NAMES, len(COLOR_NAMES)) if x != colour]
    hard = [ref, *[o for o in _objs(scene) if o not in (ref, ans)], *recoloured]
    return _Draft(
        query={"text": f"what object has the same colour as the {ref_shape} ?", "image": R.render_scene(scene)},
        cot=f"the {ref_shape} is {colour} . the other {colour} object is the {ans_shape} . {_name(ans)}",
        target=_name(ans), distractors=_hard(map(_name, hard)),
        fill=lambda r: _name(r.choice(OBJECTS)), kind="text", meta={"scene": scene, "shape": ref_shape})


def _count_vqa(c: _Ctx) -> _Draft:
    rng = c.rng
    colour = rng.choice(COLOR_NAMES)
    # (colour, shape) pairs are unique per scene, so a colour occurs at most len(SHAPES) times
    k = rng.choices(range(len(SHAPES) + 1), weights=[1] + [2] * len(SHAPES))[0]
    n = rng.randint(max(2, k), 9)
    objs = rng.sample([o for o in OBJECTS if o[0] == colour], k) + \
        rng.sample([o for o in OBJECTS if o[0] != colour], n - k)
    scene = _place(rng, objs)
    shapes = [s for col, s in _listed(scene) if col == colour]
    return _Draft(
        query={"text": f"how many {colour} objects are there ?", "image": R.render_scene(scene)},
        cot=f"{colour} objects : {' , '.join(shapes) or 'none'} . count {k}",
        target=str(k), distractors=_hard(_labels([k - 1, k + 1], 9)),
        fill=lambda r: str(r.randrange(10)), kind="text", meta={"scene": scene, "colour": colour})


def _t2i_digits(c: _Ctx) -> _Draft:
    rng = c.rng
    a, b = sorted((rng.randrange(10), rng.randrange(10)), reverse=True)
    s, d = a + b, a - b
    same_sum = [(x, s - x) for x in range(10) if 0 <= s - x <= 9]
    same_diff = [(x, x - d) for x in range(d, 10)]
    rng.shuffle(same_sum)
    rng.shuffle(same_diff)
    return _Draft(
        query={"text": f"find the two digits whose sum is {s} and the left minus the right is {d}"},
        cot=f"sum {s} , left minus right {d} . left {a} right {b}",
        target=(a, b), distractors=_hard([(b, a), *_interleave(same_sum, same_diff)]),
        fill=lambda r: (r.randrange(10), r.randrange(10)), kind="pair", meta={"sum": s, "diff": d})


def _i2t_count_caption(c: _Ctx) -> _Draft:
    rng = c.rng
    while True:  # rejection-sample a scene whose most frequent colour is unique
        objs = rng.sample(OBJECTS, rng.randint(3, 8))
        ranked = Counter(col for col, _ in objs).most_common()
        if len(ranked) == 1 or ranked[0][1] > ranked[1][1]:
            break
    scene, n, (top, m) = _place(rng, objs), len(objs), ranked[0]

    def caption(n, col):
        return f"{n} objects , most are {col}"

    present = [col for col, _ in ranked[1:]]
    return _Draft(
        query={"text": "find the caption of this image", "image": R.render_scene(scene)},
        cot=f"{_names(_listed(scene))} . {n} objects . {top} {m}",
        target=caption(n, top),
        distractors=_hard([caption(n - 1, top), caption(n + 1, top), *(caption(n, x) for x in present)]),
        fill=lambda r: caption(r.randint(2, 9), r.choice(COLOR_NAMES)), kind="text", meta={"scene": scene})


def _hop_grounding(c: _Ctx) -> _Draft:
    rng = c.rng
    ref_colour, ans_colour = rng.sample(COLOR_NAMES, 2)
    shape = rng.choice(SHAPES)
    ref, ans = (ref_colour, shape), (ans_colour, shape)
    others = rng.sample([o for o in OBJECTS if o[0] != ref_colour and o[1] != shape], rng.randint(3, 6))
    scene = _place(rng, [ref, ans, *others])
    rest = sorted((o for o in _objs(scene) if o not in (ref, ans)), key=lambda o: o[0] != ans_colour)
    same_shape = [(x, shape) for x in rng.sample(COLOR_NAMES, len(COLOR_NAMES)) if x not in (ref_colour, ans_colour)]
    # every scene object's crop first (same-colour-as-answer ones are hard), then same-shape crops
    distractors = [(ref, True), *((o, o[0] == ans_colour) for o in rest), *_hard(same_shape)]
    return _Draft(
        query={"text": f"select the object with the same shape as the {ref_colour} object",
               "image": R.render_scene(scene)},
        cot=f"the {ref_colour} object is a {shape} . the other {shape} is {ans_colour} . {_name(ans)}",
        target=ans, distractors=distractors, fill=lambda r: r.choice(OBJECTS), kind="crop",
        meta={"scene": scene, "colour": ref_colour})


def _composed_edit(c: _Ctx) -> _Draft:
    rng = c.rng
    shape = rng.choice(SHAPES)
    old, new = rng.sample(COLOR_NAMES, 2)
    others = rng.sample([o for o in OBJECTS if o[1] != shape], rng.randint(2, 4))  # named shape is unique
    scene = _place(rng, [(old, shape), *others])
    i = scene.index((old, shape))

    def recolour(j, col):
        s = list(scene)
        s[j] = (col, s[j][1])
        return tuple(s)

    target = recolour(i, new)
    wrong_object = [recolour(j, new) for j, o in enumerate(scene)
                    if o and j != i and o[0] != new and (new, o[1]) not in scene]  # keep pairs unique
    wrong_colour = [recolour(i, x) for x in rng.sample(COLOR_NAMES, len(COLOR_NAMES)) if x not in (old, new)]
    return _Draft(
        query={"text": f"make the {shape} {new}", "image": R.render_scene(scene)},
        cot=f"the {shape} is {old} . it becomes {new} . {_names(_listed(target))}",
        target=target, distractors=_hard([scene, *wrong_object, *wrong_colour]),
        fill=lambda r: _random_scene(r, 3, 5), kind="scene",
        meta={"scene": scene, "shape": shape, "colour": new})


def _video_digit_qa(c: _Ctx) -> _Draft:
    ds = [c.rng.randrange(10) for _ in range(4)]
    ans = ds[0] + ds[3]
    return _Draft(
        query={"text": "what is the sum of the first and the last digit ?", "video": c.video(ds)},
        cot=f"digits {' '.join(map(str, ds))} . {ds[0]} plus {ds[3]} is {ans}",
        target=str(ans),
        distractors=_hard(_labels([ds[0] + ds[1], ds[2] + ds[3], ds[1] + ds[2], ans - 1, ans + 1], 18)),
        fill=lambda r: str(r.randint(0, 18)), kind="text", meta={"digits": tuple(ds)})


def _doc_table_ret(c: _Ctx) -> _Draft:
    rng = c.rng
    x, y = rng.sample(ITEMS, 2)
    vx, vy = rng.randint(1, 9), rng.randint(1, 9)
    s = vx + vy

    def satisfies(page):
        v = dict(page)
        return x in v and y in v and v[x] + v[y] == s

    other_sums = rng.sample([(u, w) for u in range(1, 10) for w in range(1, 10) if u + w != s], 3)
    same_items = [_page(rng, [(x, u), (y, w)]) for u, w in other_sums]
    other_pairs = []
    for _ in range(3):
        p, q = rng.choice([pq for pq in itertools.permutations(ITEMS, 2) if set(pq) != {x, y}])
        u = rng.randint(max(1, s - 9), min(9, s - 1))
        other_pairs.append(_page(rng, [(p, u), (q, s - u)]))
    return _Draft(
        query={"text": f"find the page where {x} plus {y} is {s}"},
        cot=f"{x} {vx} , {y} {vy} . {vx} plus {vy} is {s}",
        target=_page(rng, [(x, vx), (y, vy)]), distractors=_hard(_interleave(same_items, other_pairs)),
        fill=_page, kind="page", meta={"items": (x, y), "sum": s}, satisfies=satisfies)


_BUILDERS = {
    "digit_sum": _digit_sum, "color_hop_vqa": _color_hop_vqa, "count_vqa": _count_vqa,
    "t2i_digits": _t2i_digits, "i2t_count_caption": _i2t_count_caption, "hop_grounding": _hop_grounding,
    "composed_edit": _composed_edit, "video_digit_qa": _video_digit_qa, "doc_table_ret": _doc_table_ret,
}
assert list(_BUILDERS) == TASK_NAMES


# ---------------------------------------------------------------------------------------------
# Public API.

FACT_SEPARATOR = " . "  # between the facts of a gold CoT


def answer_first(cot: str) -> str:
    """The CoT with its last fact (the answer) moved to the front. Decoded from think tokens alone, its first
    tokens must then come from the think tokens' states, not from the CoT branch reading the earlier facts
    it was fed (teacher forcing lets the branch compute the answer itself). A CoT of one fact is unchanged."""
    facts = cot.split(FACT_SEPARATOR)
    return FACT_SEPARATOR.join(facts[-1:] + facts[:-1])


def make_example(task: str, split: str, index: int) -> Example:
    """Deterministic: the same (task, split, index) always yields the same texts and pixels."""
    if task not in _BUILDERS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASK_NAMES}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    c = _Ctx(random.Random(f"{BENCH_VERSION}/{split}/{task}/{index}"), split)
    d = _BUILDERS[task](c)
    facts, target, hard = _pool(c.rng, d)
    candidates, cand_ids = zip(*(_candidate(c, d.kind, f) for f in facts))
    meta = {**d.meta, "facts": facts, "split": split, "index": index, "digit_ids": c.digit_ids}
    return Example(task, d.query, d.cot, list(candidates), target, hard, list(cand_ids), meta)


def _task_names(tasks) -> list[str]:
    names = TASK_NAMES if tasks is None else list(tasks)
    unknown = [t for t in names if t not in _BUILDERS]
    if unknown:
        raise ValueError(f"unknown tasks {unknown}")
    return names


def load_split(split: str, n_per_task: int | None = None, tasks: list[str] | None = None) -> list[Example]:
    """Task-major list of examples with indices 0..n_per_task-1 (defaults: test 120, val 40)."""
    if n_per_task is None:
        if split not in DEFAULT_SIZES:
            raise ValueError(f"split {split!r} has no default size; pass n_per_task")
        n_per_task = DEFAULT_SIZES[split]
    return [make_example(t, split, i) for t in _task_names(tasks) for i in range(n_per_task)]


def train_stream(seed: int = 0, tasks: list[str] | None = None) -> Iterator[Example]:
    """Endless, deterministic stream of train examples: each cycle visits every task once in a
    seeded order, at train index seed * 1e9 + cycle (so different seeds see different data)."""
    names = _task_names(tasks)
    rng = random.Random(f"{BENCH_VERSION}/stream/{seed}")
    for k in itertools.count():
        for task in rng.sample(names, len(names)):
            yield make_example(task, "train", seed * _STREAM_STRIDE + k)


PERCEPTION_KINDS = ["scene", "digits", "video", "crop", "page"]


def perception_example(kind: str, rng: random.Random, max_objects: int = 9) -> tuple[Input, str]:
    """Base-model pretraining pair (no reasoning): an Input without text and its caption.
    Digit instances come from the train partition only."""
    c = _Ctx(rng, "train")
    if kind == "scene":
        scene = _random_scene(rng, 1, min(max_objects, R.GRID * R.GRID))
        return {"image": R.render_scene(scene)}, _names(_listed(scene))
    if kind in ("digits", "video"):
        ds = [rng.randrange(10) for _ in range(2 if kind == "digits" else 4)]
        inp = {"image": c.pair(*ds)} if kind == "digits" else {"video": c.video(ds)}
        return inp, "digits " + " ".join(map(str, ds))
    if kind == "crop":
        obj = rng.choice(OBJECTS)
        return {"image": R.render_crop(obj)}, _name(obj)
    if kind == "page":
        page = _page(rng)
        return {"image": R.render_page(page)}, _page_text(page)
    raise ValueError(f"unknown perception kind {kind!r}; expected one of {PERCEPTION_KINDS}")


QUESTION_KINDS = ["scene", "digits", "video", "page"]


def perception_question(kind: str, rng: random.Random) -> tuple[Input, str, list[str]]:
    """Base-model pretraining question answered by reading one thing off the input (no reasoning hop, no
    count, no arithmetic): (the input with its question, the answer, every answer of that question type).
    A scene question names an object by its unique shape or colour and asks for the other attribute."""
    c = _Ctx(rng, "train")
    if kind == "scene":
        while True:
            objs = _objs(_random_scene(rng, 2, 6))
            by_shape = rng.random() < 0.5  # "what colour is the <shape> ?" or "what shape is the <colour> object ?"
            key = Counter(o[1] if by_shape else o[0] for o in objs)
            unique = [o for o in objs if key[o[1] if by_shape else o[0]] == 1]
            if unique:
                break
        scene = _place(rng, objs)
        colour, shape = rng.choice(unique)
        question, answer, choices = ((f"what colour is the {shape} ?", colour, COLOR_NAMES) if by_shape else
                                     (f"what shape is the {colour} object ?", shape, SHAPES))
        return {"text": question, "image": R.render_scene(scene)}, answer, list(choices)
    digits = [str(d) for d in range(10)]
    if kind in ("digits", "video"):
        ds = [rng.randrange(10) for _ in range(2 if kind == "digits" else 4)]
        first = rng.random() < 0.5
        if kind == "digits":
            return ({"text": f"what is the {'left' if first else 'right'} digit ?", "image": c.pair(*ds)},
                    str(ds[0 if first else 1]), digits)
        return ({"text": f"what is the {'first' if first else 'last'} digit ?", "video": c.video(ds)},
                str(ds[0 if first else -1]), digits)
    if kind == "page":
        page = _page(rng)
        item, value = rng.choice(page)
        return {"text": f"what is the {item} of the page ?", "image": R.render_page(page)}, str(value), digits[1:]
    raise ValueError(f"unknown question kind {kind!r}; expected one of {QUESTION_KINDS}")


def page_rows(caption: str) -> R.Page:
    """The (item, value) rows of the page a page caption describes, in order (the inverse of its caption)."""
    return tuple((item, int(v)) for item, v in (fact.split() for fact in caption.split(" , ")))


def page_sibling_example(caption: str, rng: random.Random) -> tuple[Input, str]:
    """A page with the rows of the page captioned `caption`, in the same order, one or more values changed:
    a hard negative for aligning pages, which the items alone cannot tell apart."""
    rows = list(page_rows(caption))
    changed = [i for i in range(len(rows)) if rng.random() < 0.5] or [rng.randrange(len(rows))]
    for i in changed:
        rows[i] = (rows[i][0], rng.choice([v for v in range(1, 10) if v != rows[i][1]]))
    page = tuple(rows)
    return {"image": R.render_page(page)}, _page_text(page)


def corpus_texts(n_per_task: int = 50, n_per_kind: int = 50) -> list[str]:
    """Texts for training the BPE tokenizer: sampled train instructions, CoTs and text candidates,
    perception captions, and every vocabulary token on its own (so rare tokens are covered)."""
    texts = []
    for ex in load_split("train", n_per_task):
        texts += [ex.query.get("text"), ex.cot, *(cand.get("text") for cand in ex.candidates)]
    rng = random.Random(f"{BENCH_VERSION}/corpus")
    texts += [perception_example(k, rng)[1] for k in PERCEPTION_KINDS for _ in range(n_per_kind)]
    return [t for t in texts if t] + VOCAB
