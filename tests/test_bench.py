"""Fast checks for TTE-Bench: determinism, split hygiene, pool invariants, single correct answer."""
import hashlib
import os
import random
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from tteflash.data import bench as B
from tteflash.data import render as R

N_CHECK = 25  # examples per task for the invariant checks

SCENE, PAIR, CROP, PAGE = (84, 84), (56, 56), (56, 56), (112, 84)
QUERY_SIZE = {"digit_sum": PAIR, "color_hop_vqa": SCENE, "count_vqa": SCENE, "i2t_count_caption": SCENE,
              "hop_grounding": SCENE, "composed_edit": SCENE}
CAND_SIZE = {"t2i_digits": PAIR, "hop_grounding": CROP, "composed_edit": SCENE, "doc_table_ret": PAGE}


def digest(ex: B.Example) -> str:
    h = hashlib.sha256()
    for inp in [ex.query, *ex.candidates]:
        h.update(repr(inp.get("text")).encode())
        for img in ([inp["image"]] if inp.get("image") else []) + inp.get("video", []):
            h.update(img.tobytes())
    h.update(f"{ex.cot}|{ex.target}|{ex.hard_negatives}|{ex.cand_ids}".encode())
    return h.hexdigest()


# --- independent re-derivation of the correct candidate(s) from the stored facts --------------

def objs(scene):
    return [o for o in scene if o]


def unique(xs):
    assert len(xs) == 1, xs
    return xs[0]


def correct_fn(ex: B.Example):
    """Predicate over candidate facts that is true exactly for answers of the query."""
    m = ex.meta
    if ex.task == "digit_sum":
        return lambda f: f == str(sum(m["digits"]))
    if ex.task == "video_digit_qa":
        return lambda f: f == str(m["digits"][0] + m["digits"][3])
    if ex.task == "count_vqa":
        return lambda f: f == str(sum(o[0] == m["colour"] for o in objs(m["scene"])))
    if ex.task == "color_hop_vqa":
        ref = unique([o for o in objs(m["scene"]) if o[1] == m["shape"]])
        ans = unique([o for o in objs(m["scene"]) if o[0] == ref[0] and o != ref])
        return lambda f: f == f"{ans[0]} {ans[1]}"
    if ex.task == "i2t_count_caption":
        (top, k), *rest = Counter(o[0] for o in objs(m["scene"])).most_common()
        assert not rest or rest[0][1] < k
        return lambda f: f == f"{len(objs(m['scene']))} objects , most are {top}"
    if ex.task == "hop_grounding":
        ref = unique([o for o in objs(m["scene"]) if o[0] == m["colour"]])
        ans = unique([o for o in objs(m["scene"]) if o[1] == ref[1] and o != ref])
        return lambda f: f == ans
    if ex.task == "composed_edit":
        i = unique([j for j, o in enumerate(m["scene"]) if o and o[1] == m["shape"]])
        assert m["scene"][i][0] != m["colour"]
        edited = tuple((m["colour"], o[1]) if j == i else o for j, o in enumerate(m["scene"]))
        return lambda f: f == edited
    if ex.task == "t2i_digits":
        return lambda f: f[0] + f[1] == m["sum"] and f[0] - f[1] == m["diff"]
    if ex.task == "doc_table_ret":
        x, y = m["items"]
        return lambda f: x in dict(f) and y in dict(f) and dict(f)[x] + dict(f)[y] == m["sum"]
    raise AssertionError(ex.task)


# --- tests ---------------------------------------------------------------------------------

def test_registry():
    assert B.BENCH_NAME == "tte-bench" and B.BENCH_VERSION == "1.1"
    assert [t.name for t in B.TASKS] == [
        "digit_sum", "color_hop_vqa", "count_vqa", "t2i_digits", "i2t_count_caption",
        "hop_grounding", "composed_edit", "video_digit_qa", "doc_table_ret"]
    assert B.DEFAULT_SIZES == {"test": 120, "val": 40}
    with pytest.raises(ValueError):
        B.load_split("train")
    with pytest.raises(ValueError):
        B.make_example("digit_sum", "dev", 0)


@pytest.mark.parametrize("task", B.TASK_NAMES)
def test_determinism_and_split_seeds(task):
    a, b = B.make_example(task, "test", 7), B.make_example(task, "test", 7)
    assert digest(a) == digest(b)
    assert digest(a) != digest(B.make_example(task, "train", 7))
    assert digest(a) != digest(B.make_example(task, "test", 8))


def test_determinism_across_processes():
    # set/dict ordering must not leak into generation: re-run under other hash seeds
    code = ("from tteflash.data import bench as B; from tests.test_bench import digest; "
            "print(*[digest(B.make_example(t, 'val', 3)) for t in B.TASK_NAMES])")
    here = " ".join(digest(B.make_example(t, "val", 3)) for t in B.TASK_NAMES)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = [root, os.path.join(root, "src"), os.environ.get("PYTHONPATH", "")]  # works installed or not
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": os.pathsep.join(p for p in path if p)}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.split() == here.split()


def test_digit_partition():
    assert [B.digit_split(i) for i in range(6)] == ["test", "val", "train", "train", "train", "test"]
    for split in B.SPLITS:
        for task in ("digit_sum", "t2i_digits", "video_digit_qa"):
            for i in range(5):
                ids = B.make_example(task, split, i).meta["digit_ids"]
                assert ids and all(B.digit_split(j) == split for j in ids)


@pytest.mark.parametrize("task", B.TASK_NAMES)
def test_pool_invariants(task):
    info = B.TASKS[B.TASK_NAMES.index(task)]
    for ex in B.load_split("test", N_CHECK, [task]):
        assert ex.task == task
        assert len(ex.candidates) == len(ex.cand_ids) == len(ex.meta["facts"]) == B.POOL_SIZE
        assert 0 <= ex.target < B.POOL_SIZE
        assert ex.hard_negatives and ex.target not in ex.hard_negatives
        assert all(0 <= h < B.POOL_SIZE for h in ex.hard_negatives)
        assert len(set(ex.cand_ids)) == B.POOL_SIZE and len(set(ex.meta["facts"])) == B.POOL_SIZE
        # exactly one candidate answers the query, and it is the target
        ok = correct_fn(ex)
        assert [i for i, f in enumerate(ex.meta["facts"]) if ok(f)] == [ex.target]
        # modalities and image sizes
        assert ("text" in ex.query) and ("image" in ex.query) == ("image" in info.query_modality)
        assert ("video" in ex.query) == (info.query_modality == "video+text")
        if "image" in ex.query:
            assert ex.query["image"].mode == "RGB" and ex.query["image"].size == QUERY_SIZE[task]
        if "video" in ex.query:
            frames = ex.query["video"]
            assert [f.size for f in frames] == [(56, 56)] * 8
            assert all(frames[i] is frames[i + 1] for i in range(0, 8, 2))  # one shot = two frames
        for cand, fact in zip(ex.candidates, ex.meta["facts"]):
            if info.target_modality == "text":
                assert cand == {"text": fact}
            else:
                assert set(cand) == {"image"} and cand["image"].size == CAND_SIZE[task]


def test_texts_use_vocab():
    vocab = set(B.VOCAB)
    for ex in B.load_split("val", 10):
        for text in [ex.query["text"], ex.cot, *(c.get("text") or "" for c in ex.candidates)]:
            assert text == text.lower().strip() and "  " not in text
            assert set(text.split()) <= vocab, (ex.task, text)


def test_cot_examples():
    ex = B.make_example("t2i_digits", "test", 0)
    a, b = ex.meta["facts"][ex.target]
    assert ex.cot == f"sum {a + b} , left minus right {a - b} . left {a} right {b}"
    ex = B.make_example("count_vqa", "test", 0)
    assert ex.cot.endswith(f"count {ex.meta['facts'][ex.target]}")


def test_answer_first_moves_the_answer_fact_to_the_front():
    assert B.answer_first("digits 4 6 . 4 plus 6 is 10") == "4 plus 6 is 10 . digits 4 6"
    assert B.answer_first("a . b . c") == "c . a . b"
    assert B.answer_first("count 3") == "count 3"  # one fact: unchanged
    for ex in B.load_split("val", 2):
        facts = ex.cot.split(B.FACT_SEPARATOR)
        assert B.answer_first(ex.cot).split(B.FACT_SEPARATOR) == [facts[-1], *facts[:-1]], ex.task


def test_load_split_and_stream():
    xs = B.load_split("val", 2)
    assert [x.task for x in xs] == [t for t in B.TASK_NAMES for _ in range(2)]
    assert digest(xs[1]) == digest(B.make_example(B.TASK_NAMES[0], "val", 1))
    s1, s2 = B.train_stream(seed=3), B.train_stream(seed=3)
    first = [next(s1) for _ in range(2 * len(B.TASKS))]
    assert [digest(x) for x in first] == [digest(next(s2)) for _ in first]
    assert sorted(x.task for x in first[:len(B.TASKS)]) == sorted(B.TASK_NAMES)  # round-robin cycles
    assert all(x.meta["split"] == "train" for x in first)
    assert digest(next(B.train_stream(seed=0, tasks=["count_vqa"]))) != digest(
        next(B.train_stream(seed=1, tasks=["count_vqa"])))


@pytest.mark.parametrize("kind", B.PERCEPTION_KINDS)
def test_perception(kind, monkeypatch):
    splits = []
    real = B._Ctx.digit
    monkeypatch.setattr(B._Ctx, "digit", lambda self, d: splits.append(self.split) or real(self, d))
    rng = random.Random(0)
    for _ in range(20):
        inp, cap = B.perception_example(kind, rng, max_objects=4)
        assert "text" not in inp and set(cap.split()) <= set(B.VOCAB)
        imgs = inp["video"] if kind == "video" else [inp["image"]]
        assert all(im.mode == "RGB" and im.width % 28 == 0 and im.height % 28 == 0 for im in imgs)
        if kind == "scene":
            assert 1 <= len(cap.split(" , ")) <= 4
        if kind in ("digits", "video"):
            assert len(cap.split()) == 1 + (2 if kind == "digits" else len(imgs) // B.FRAMES_PER_SHOT)
    assert set(splits) <= {"train"}
    with pytest.raises(ValueError):
        B.perception_example("nope", rng)


@pytest.mark.parametrize("kind", B.QUESTION_KINDS)
def test_perception_questions_are_answered_by_their_input(kind, monkeypatch):
    """Each answer is re-derived from what was drawn: the scene, the page or the digits (train split only)."""
    drawn = []
    real_digit, real_scene, real_page = B._Ctx.digit, R.render_scene, R.render_page
    monkeypatch.setattr(B._Ctx, "digit", lambda self, d: drawn.append((self.split, d)) or real_digit(self, d))
    monkeypatch.setattr(B.R, "render_scene", lambda scene: drawn.append(scene) or real_scene(scene))
    monkeypatch.setattr(B.R, "render_page", lambda page: drawn.append(page) or real_page(page))
    rng = random.Random(1)
    for _ in range(30):
        drawn.clear()
        inp, answer, choices = B.perception_question(kind, rng)
        words = inp["text"].split()
        assert set(words) <= set(B.VOCAB) and answer in choices and len(set(choices)) == len(choices) >= 4
        if kind == "scene":
            objs = [o for o in drawn[0] if o]
            if words[1] == "colour":  # "what colour is the <shape> ?"
                named = [o for o in objs if o[1] == words[4]]
                assert len(named) == 1 and answer == named[0][0]
            else:  # "what shape is the <colour> object ?"
                named = [o for o in objs if o[0] == words[4]]
                assert len(named) == 1 and answer == named[0][1]
        elif kind == "page":
            assert answer == str(dict(drawn[0])[words[3]])
        else:
            assert {split for split, _ in drawn} == {"train"}
            digits = [d for _, d in drawn]  # one draw per digit (a video's shot repeats its frame)
            assert len(digits) == (2 if kind == "digits" else 4)
            assert answer == str(digits[0] if words[3] in ("left", "first") else digits[-1])
    with pytest.raises(ValueError, match="unknown question kind"):
        B.perception_question("crop", rng)


def test_render_pixels():
    crop = R.render_crop(("orange", "cross"))
    assert crop.getpixel((28, 28)) == R.COLORS["orange"] and crop.getpixel((1, 1)) == R.BG
    scene = R.render_scene((None, ("blue", "circle"), *[None] * 6, ("red", "square")))
    assert scene.getpixel((42, 14)) == R.COLORS["blue"] and scene.getpixel((70, 70)) == R.COLORS["red"]
    assert scene.getpixel((14, 14)) == R.BG
    page = R.render_page((("apple", 7), ("pear", 2), ("plum", 5)))
    assert page.size == (112, 84)
    assert [page.getpixel((0, 28 * r)) for r in range(3)] == R.ROW_TINTS  # zebra rows: the row cue
    assert np.asarray(page.crop((84, 0, 112, 28)).convert("L")).min() < 50  # the number is drawn there
    pair = R.render_digit_pair(np.zeros((8, 8)), np.zeros((8, 8)))
    assert pair.getpixel((0, 0)) == R.PAIR_TINTS[0] and pair.getpixel((55, 0)) == R.PAIR_TINTS[1]
    frames = [R.render_digit_frame(np.zeros((8, 8)), i) for i in range(4)]
    assert [f.getpixel((0, 0)) for f in frames] == R.FRAME_TINTS  # each frame carries its index


def test_corpus_texts_cover_vocab():
    texts = B.corpus_texts(n_per_task=3, n_per_kind=3)
    assert set(B.VOCAB) <= {tok for t in texts for tok in t.split()}


def test_full_test_split():
    xs = B.load_split("test")
    assert len(xs) == 1080 and Counter(x.task for x in xs) == {t: 120 for t in B.TASK_NAMES}
    for ex in xs:
        ok = correct_fn(ex)
        assert [i for i, f in enumerate(ex.meta["facts"]) if ok(f)] == [ex.target]
        assert ex.hard_negatives and ex.target not in ex.hard_negatives
