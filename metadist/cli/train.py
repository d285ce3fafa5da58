"""`metadist train | eval | predict`: meta-train a job, measure a checkpoint, use it on your own images."""

from __future__ import annotations

import json
import sys

import yaml

from metadist.errors import ConfigError


def add_commands(commands) -> None:
    train = commands.add_parser("train", help="meta-train a job (no JOB: the embedded default, bundled Omniglot 5-way 1-shot)")
    train.add_argument("job", nargs="?", help="job file (YAML, any fsspec URI); see jobs/")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a setting, e.g. --set train.steps=100 --set algorithm.name=fomaml (repeatable)")
    train.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                       help="continue from the newest checkpoint of the job (or the given checkpoint file/folder)")
    train.add_argument("--workers", type=int, metavar="N",
                       help="train on Ray with N task workers (sets distributed.workers; 0: in this process)")
    train.add_argument("--address", metavar="ADDRESS",
                       help="Ray cluster to join (sets distributed.address; default $RAY_ADDRESS, else a local Ray "
                       "started in this process). A cluster with token auth: RAY_AUTH_MODE=token and ~/.ray/auth_token")
    train.add_argument("--print-config", action="store_true", help="print the resolved job and exit")
    train.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    train.set_defaults(handler=_train)

    ev = commands.add_parser("eval", help="held-out accuracy (or MSE) of a checkpoint with a 95%% confidence interval")
    ev.add_argument("--checkpoint", required=True, help="checkpoint file, or a folder (its newest checkpoint)")
    ev.add_argument("--episodes", type=int, help="test episodes (default: the job's train.final_eval_episodes, 600)")
    ev.add_argument("--data", help="test shard set URI (default: the job's data.test)")
    ev.add_argument("--groups", nargs="+", help="only these groups (alphabets) of the test shard set")
    ev.add_argument("--ways", type=int)
    ev.add_argument("--shots", type=int)
    ev.add_argument("--queries", type=int)
    ev.add_argument("--inner-steps", type=int, help="adaptation steps (default: the job's algorithm.eval_inner_steps)")
    ev.add_argument("--eval-shift", type=int, help="test-time augmentation: shifted copies within ±N px (default: the "
                    "job's algorithm.eval_shift)")
    ev.add_argument("--transductive-steps", type=int, help="protonet: soft k-means steps refining the prototypes over "
                    "each episode's queries (default: the job's algorithm.transductive_steps)")
    ev.add_argument("--eval-relabelings", type=int, help="snail: class probabilities averaged over this many "
                    "relabelings of each task (default: the job's algorithm.eval_relabelings)")
    ev.add_argument("--seed", type=int, help="episode seed (default: the job's)")
    ev.add_argument("--json", action="store_true", help="print the result as JSON")
    ev.set_defaults(handler=_eval)

    pr = commands.add_parser("predict", help="adapt to a support folder (<class>/<images>) and classify query images")
    pr.add_argument("--checkpoint", required=True)
    pr.add_argument("--support", required=True, help="folder with one sub-folder of images per class")
    pr.add_argument("--query", required=True, nargs="+", help="query image files and/or folders")
    pr.add_argument("--inner-steps", type=int, help="adaptation steps (default: the checkpoint's algorithm.eval_inner_steps)")
    pr.add_argument("--device", default="cpu")
    pr.set_defaults(handler=_predict)


# -- train -----------------------------------------------------------------------------------------------------------
def _train(args) -> int:
    from metadist.api import resolve_job, run_job

    job = resolve_job(args.job, args.overrides, workers=args.workers, address=args.address)
    text = yaml.safe_dump(job.model_dump(mode="json"), sort_keys=False)
    if args.print_config:
        print(text, end="")
        return 0
    print(f"# metadist job {job.name}\n{text}", file=sys.stderr)
    result = run_job(job, resume=args.resume, progress=not args.no_progress)
    print(f"checkpoint: {result.checkpoint_uri}")
    if result.run_id:
        print(f"mlflow run: {result.run_id}")
    for key, estimate in result.test.items():
        print(f"test {key}: {estimate}  ({estimate.n} episodes)")
    return 0


# -- eval ------------------------------------------------------------------------------------------------------------
def _one_train_source(job, what: str):
    """The training source that evaluation falls back on when the job has no test set: there must be only one."""
    from metadist.config import TaskSourceConfig, WeightedSourceConfig

    sources = job.data.train_sources  # validated: classification names its training shards
    if len(sources) > 1:
        raise ConfigError(f"{what}: data.train has {len(sources)} sources, so which to evaluate on is unclear; "
                          "name the shard set with --data")
    source = sources[0][0]
    return TaskSourceConfig(**source.model_dump(exclude={"weight"})) if isinstance(source, WeightedSourceConfig) else source


def _eval(args) -> int:
    from metadist.config import apply_flags
    from metadist.core import build, make_sampler, resolve_device
    from metadist.core import checkpoint as ckpt_io
    from metadist.training.evaluation import evaluate

    saved = ckpt_io.load(args.checkpoint)
    job = saved.job
    # No test set: measure on the training shards (their storage options kept), unless --data names other shards.
    if job.data.regression is None and job.data.test is None and (args.data or args.groups) and not (
        args.data and len(job.data.train_sources) > 1
    ):
        job = job.model_copy(update={"data": job.data.model_copy(update={"test": _one_train_source(job, "--groups")})})
    # The flags are job settings: the job model validates them, as it does a job file or --set.
    job = apply_flags(job, {
        "--episodes": ("train.final_eval_episodes", args.episodes),
        "--data": ("data.test", None if args.data is None else {"uri": args.data}),
        "--groups": ("data.test.split", None if args.groups is None else {"groups": args.groups}),
        "--ways": ("data.test_episode.ways", args.ways),
        "--shots": ("data.test_episode.shots", args.shots),
        "--queries": ("data.test_episode.queries", args.queries),
        "--inner-steps": ("algorithm.eval_inner_steps", args.inner_steps),
        "--eval-shift": ("algorithm.eval_shift", args.eval_shift),
        "--transductive-steps": ("algorithm.transductive_steps", args.transductive_steps),
        "--eval-relabelings": ("algorithm.eval_relabelings", args.eval_relabelings),
        "--seed": ("train.seed", args.seed),
    })  # fmt: skip
    source, episode = None, None
    if job.data.regression is None:
        source = job.data.test or _one_train_source(job, "a job without data.test")
        episode = job.data.test_episode
        if saved.model_spec.outputs is not None and episode.ways > saved.model_spec.outputs:
            raise ConfigError(f"--ways {episode.ways}: the checkpoint's head has {saved.model_spec.outputs} outputs")
    sampler = make_sampler(job, "test", episode=episode, source=source)
    device = resolve_device(job.train.device)
    model, learner = build(job, saved.model_spec)
    model.to(device)
    params = {k: v.to(device) for k, v in saved.meta_params.items()}
    episodes = job.train.final_eval_episodes
    result = evaluate(learner, params, sampler, episodes=episodes, batch_size=job.train.meta_batch,
                      inner_steps=job.algorithm.eval_inner_steps, device=device, progress=True, precision=job.train.precision)
    if args.json:
        print(json.dumps({k: {"mean": e.mean, "ci95": e.ci95, "episodes": e.n} for k, e in result.items()}, indent=2))
    else:
        what = f"{episode.ways}-way {episode.shots}-shot" if episode else getattr(job.data.regression, "family", "regression")
        print(f"{saved.uri} (step {saved.step}), {what}, {episodes} episodes:")
        for key, estimate in result.items():
            print(f"  {key:18s} {estimate}")
    return 0


# -- predict ---------------------------------------------------------------------------------------------------------
def _predict(args) -> int:
    from metadist.config import apply_flags
    from metadist.core import checkpoint as ckpt_io
    from metadist.inference import FewShotClassifier, read_queries, read_support

    saved = ckpt_io.load(args.checkpoint)
    job = apply_flags(saved.job, {"--inner-steps": ("algorithm.eval_inner_steps", args.inner_steps)})
    classifier = FewShotClassifier(saved, device=args.device, inner_steps=job.algorithm.eval_inner_steps, where=args.checkpoint)
    support_images, support_labels = read_support(args.support)
    query_images, sources = read_queries(args.query)
    predictions = classifier.predict(support_images, support_labels, query_images)
    for source, prediction in zip(sources, predictions):
        print(json.dumps({"query": source, "label": prediction.label, "scores": prediction.scores}))
    return 0
