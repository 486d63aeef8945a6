"""`tte-flash` command line."""
from __future__ import annotations

import argparse
import sys


def _positive_int(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def main(argv=None) -> int:
    from .config import add_arguments, from_args

    ap = argparse.ArgumentParser(prog="tte-flash", description="TTE-Flash: reasoning-aware multimodal embeddings")
    sub = ap.add_subparsers(dest="command", required=True)

    from .train.demo import DEMO_STEPS
    from .train.trainer import TrainConfig
    demo = sub.add_parser("demo", help="train no-think, TTE-Flash K=8 and explicit CoT from the base; evaluate; report")
    demo.add_argument("--base", default="checkpoints/base", help="base checkpoint directory")
    demo.add_argument("--out", default="runs/demo", help="output directory (finished methods are reused)")
    demo.add_argument("--n-test", type=int, default=None, help="test queries per task (default: the full split)")
    demo.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    demo.add_argument("--workers", type=_positive_int, default=None,
                      help="methods trained at once, one process each (default: all three on CPU, 1 on a GPU)")
    add_arguments(demo, TrainConfig)
    demo.set_defaults(steps=DEMO_STEPS)

    trn = sub.add_parser("train", help="train one model on TTE-Bench's training split and save it (under torchrun: "
                         "data-parallel, one global contrastive batch)")
    trn.add_argument("--model", default="checkpoints/base", help="starting checkpoint (base, TTE-Flash or Qwen-VL dir / hub id)")
    trn.add_argument("--out", required=True, help="run directory: checkpoint.pt, log.jsonl, and the trained model in out/model")
    trn.add_argument("--think-tokens", type=int, default=None, help="K think tokens (default: the checkpoint's setting)")
    trn.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available; cuda:LOCAL_RANK under torchrun)")
    add_arguments(trn, TrainConfig)

    base = sub.add_parser("base", help="pretrain the small base checkpoint (perception, language, alignment)")
    from .train.base import add_arguments as add_base_arguments
    add_base_arguments(base)

    st = sub.add_parser("study", help="the design-study grid: train, evaluate, report (resumable)")
    st.add_argument("--config", default="configs/study.yaml", help="study grid (YAML)")
    st.add_argument("--seeds", default=None, help="comma-separated subset of the config's seeds")
    st.add_argument("--runs", default=None, help="comma-separated subset of the config's runs (names)")
    st.add_argument("--device", default="cpu")
    st.add_argument("--workers", type=_positive_int, default=None, help="runs trained at once (default: one per CPU core)")
    st.add_argument("--quick", action="store_true", help="the config's `quick` subset (one seed, shorter runs)")
    st.add_argument("--finished-only", action="store_true", help="train nothing: report the runs finished so far")

    enc = sub.add_parser("encode", help="embed texts (one per line of a file, or arguments) and save a .npy")
    enc.add_argument("--model", required=True, help="checkpoint directory or hub id")
    enc.add_argument("--out", required=True, help="output .npy file")
    enc.add_argument("--role", choices=["query", "document"], default="query")
    enc.add_argument("--batch-size", type=int, default=32)
    enc.add_argument("texts", nargs="*", help="texts to embed (default: read lines from stdin)")

    ev = sub.add_parser("eval", help="benchmark evaluations")
    ev_sub = ev.add_subparsers(dest="benchmark", required=True)
    from .eval.mmeb.harness import MMEBEvalConfig
    mmeb = ev_sub.add_parser("mmeb", help="MMEB-v2 (78 tasks): encode, score, write per-task files and a summary")
    mmeb.add_argument("--list", action="store_true", help="print the task registry, one JSON object per line, and exit")
    add_arguments(mmeb, MMEBEvalConfig)

    tr = sub.add_parser("traces", help="gold CoT traces from a teacher VLM for MMEB-train examples (resumable JSONL)")
    tr.add_argument("--data", nargs="+", required=True, help="MMEB-train parquet file(s), one per subset")
    tr.add_argument("--image-root", required=True, help="folder the parquet image paths are relative to")
    tr.add_argument("--teacher", required=True, help="http(s) URL of an OpenAI-compatible API (e.g. vLLM), or a local checkpoint")
    tr.add_argument("--teacher-model", default=None, help="model name sent to the API")
    tr.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key, if any")
    tr.add_argument("--out", required=True, help="traces JSONL (failures go to <out>.failed.jsonl)")
    tr.add_argument("--workers", type=int, default=8, help="concurrent requests")
    tr.add_argument("--retries", type=int, default=3, help="retries per example (errors, timeouts, malformed answers)")
    tr.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    tr.add_argument("--max-tokens", type=int, default=512, help="longest answer")
    tr.add_argument("--limit", type=int, default=None, help="first N examples of each file")
    tr.add_argument("--retry-failed", action="store_true", help="try again the examples recorded as failures")

    a = ap.parse_args(argv)
    if a.command == "demo":
        from .train.demo import check_sampler, run_demo
        try:
            cfg = from_args(TrainConfig, a)
            check_sampler(cfg)  # settings the sampler rejects fail here, not inside a worker process
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        run_demo(a.base, a.out, cfg, n_test=a.n_test, device=a.device, workers=a.workers)
    elif a.command == "train":
        return _train(a)
    elif a.command == "base":
        from .train.base import from_arguments
        from_arguments(a)
    elif a.command == "study":
        from .train.study import Study, run_study
        seeds = [int(s) for s in a.seeds.split(",")] if a.seeds else None
        study = Study.load(a.config, quick=a.quick)
        if a.runs:
            study = study.only(a.runs.split(","))
        print("\n".join(run_study(study, device=a.device, only_seeds=seeds, workers=a.workers,
                                         finished_only=a.finished_only)["conclusions"]))
    elif a.command == "eval":
        return _eval_mmeb(a)
    elif a.command == "traces":
        return _traces(a)
    elif a.command == "encode":
        from .files import save_npy_atomic
        from .model import TTEFlashModel
        from .processing import InputError
        texts = a.texts or [line.rstrip("\n") for line in sys.stdin if line.strip()]
        model = TTEFlashModel.from_pretrained(a.model)
        try:
            emb = model.encode(texts, batch_size=a.batch_size, role=a.role)
        except InputError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        save_npy_atomic(a.out, emb)  # never a half-written output file
        print(f"wrote {emb.shape[0]} x {emb.shape[1]} embeddings to {a.out}")
    return 0


def _train(a) -> int:
    """`tte-flash train`; `torchrun --nproc_per_node N -m tteflash.cli train ...` runs it on N ranks."""
    import os

    import torch

    from .config import from_args
    from .files import atomic_dir
    from .model import TTEFlashModel
    from .train import distributed
    from .train.demo import check_sampler, examples_for_step
    from .train.trainer import TrainConfig, train

    try:
        cfg = from_args(TrainConfig, a)
        check_sampler(cfg)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    multi = distributed.init_from_env()
    rank = distributed.world()[0]
    device = a.device or (f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu")
    try:
        model = TTEFlashModel.from_pretrained(a.model, {} if a.think_tokens is None else {"think_tokens": a.think_tokens})
        model.to(device)
        # the step's examples are a pure function of the step (exact resume); each rank trains on its slice
        train(model, cfg, a.out, lambda step: examples_for_step(step, cfg), progress=rank == 0)
        if rank == 0:
            with atomic_dir(os.path.join(a.out, "model")) as tmp:
                model.save_pretrained(tmp)
            print(f"trained {cfg.steps} steps on {distributed.world()[1]} rank(s); model in {os.path.join(a.out, 'model')}")
        distributed.barrier()
    finally:
        if multi:
            torch.distributed.destroy_process_group()
    return 0


def _eval_mmeb(a) -> int:
    from .config import from_args
    from .eval.mmeb.harness import MMEBEvalConfig, run
    from .eval.mmeb.readers import MMEBDataError
    from .eval.mmeb.registry import list_lines
    from .processing import InputError
    if a.list:
        print("\n".join(list_lines()))
        return 0
    cfg = from_args(MMEBEvalConfig, a)
    try:
        run(cfg)
    except (MMEBDataError, InputError, KeyError, ValueError, ImportError) as e:
        print(f"error: {e.args[0] if isinstance(e, KeyError) and e.args else e}", file=sys.stderr)
        return 2
    return 0


def _traces(a) -> int:
    import os

    from .data.mmeb_train import MMEBTrainError, read_mmeb_train
    from .traces import LocalTeacher, OpenAITeacher, generate_traces
    try:
        examples = [ex for f in a.data for ex in read_mmeb_train(f, a.image_root, limit=a.limit)]
    except MMEBTrainError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.teacher.startswith(("http://", "https://")):
        if not a.teacher_model:
            print("error: --teacher-model is required with an API teacher", file=sys.stderr)
            return 2
        teacher = OpenAITeacher(a.teacher, a.teacher_model, os.environ.get(a.api_key_env), a.timeout, a.max_tokens)
    else:
        from .model import TTEFlashModel
        teacher = LocalTeacher(TTEFlashModel.from_pretrained(a.teacher), a.teacher, a.max_tokens)
    counts = generate_traces(examples, teacher, a.out, workers=a.workers, retries=a.retries, retry_failed=a.retry_failed)
    print(f"traces: {counts['ok']} written, {counts['failed']} failed, {counts['skipped']} already done -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
