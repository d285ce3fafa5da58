"""`metadist data ...`: import, fetch, inspect, verify and sample shard sets."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from metadist.config import EpisodeConfig, SplitConfig, TrainConfig
from metadist.data.bundled import SCHEME, cache_dir, resolve_uri
from metadist.data.shapes import EpisodeShape

DEFAULT_SAMPLE_URI = f"{SCHEME}omniglot-small1"


def add_commands(commands) -> None:
    data = commands.add_parser("data", help="task shards: import, fetch, info, verify, sample")
    sub = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")

    imp = sub.add_parser("import", help="turn a data set into a shard set")
    kinds = imp.add_subparsers(dest="kind", required=True, metavar="KIND")
    omni = kinds.add_parser("omniglot", help="Omniglot zip files or extracted folders")
    omni.add_argument("inputs", nargs="+", help="images_background*.zip / images_evaluation.zip or their folders (any fsspec URI)")
    _add_output_args(omni)
    omni.add_argument("--image-size", type=int, help="side of the square examples (default 28, the MAML preprocessing)")
    omni.set_defaults(handler=_import_omniglot)

    folder = kinds.add_parser("folder", help="<root>/<class>/<image> or <root>/<group>/<class>/<image>")
    folder.add_argument("root", help="folder or zip (any fsspec URI)")
    _add_output_args(folder)
    folder.add_argument("--image-size", type=int, nargs="+", default=[84], metavar="SIDE", help="H [W] after resizing (default 84)")
    folder.add_argument("--mode", choices=["L", "RGB"], default="RGB", help="colour mode (default RGB)")
    folder.add_argument("--resample", default="bilinear", help="resize filter: nearest, bilinear, bicubic, lanczos, box")
    folder.add_argument("--store", choices=["tensor", "image"], default="tensor", help="pixels now, or encoded files decoded at load")
    folder.add_argument("--name", help="data set name for the manifest (default: the folder's name)")
    folder.set_defaults(handler=_import_folder)

    for kind, (help_text, input_help) in BENCHMARKS.items():
        bench = kinds.add_parser(kind, help=help_text)
        bench.add_argument("input", nargs="?", help=input_help + " (any fsspec URI)")
        bench.add_argument("--inputs", dest="input_option", metavar="INPUT", help="the same as the positional INPUT")
        _add_output_args(bench, out_help="folder URI: one shard set per split goes to OUT/train, OUT/val, OUT/test")
        bench.add_argument("--size", "--image-size", dest="size", type=int, default=84, help="side of the stored RGB squares (default 84)")
        bench.add_argument("--resample", default="bilinear", help="resize filter: nearest, bilinear (default), bicubic, lanczos, box")
        if kind == "mini-imagenet":
            bench.add_argument("--images", choices=["ravi", "all"], default="ravi",
                               help="Ravi & Larochelle's 600 images per class (default), or every image given")
        if kind == "cub":
            bench.add_argument("--bounding-boxes", action="store_true", help="crop each image to its bird's box (bounding_boxes.txt)")
        bench.set_defaults(handler=_import_benchmark)

    fetch = sub.add_parser("fetch", help="download a public data set and import it")
    fetch.add_argument("dataset", choices=["omniglot"])
    fetch.add_argument("--out", help="shard set URI (default: the local cache)")
    fetch.add_argument("--download-dir", type=Path, help="where the archives go (default: the local cache)")
    fetch.add_argument("--base-url", help="mirror of the official location (http(s):// or file://)")
    fetch.add_argument("--format", choices=["arrow", "parquet"], default="arrow")
    fetch.add_argument("--overwrite", action="store_true")
    fetch.set_defaults(handler=_fetch)

    info = sub.add_parser("info", help="summarize a shard set from its manifest")
    info.add_argument("uri", help="shard set URI or bundled://NAME")
    info.add_argument("--json", action="store_true", help="print the manifest")
    info.set_defaults(handler=_info)

    verify = sub.add_parser("verify", help="check every shard's checksum and every class's rows")
    verify.add_argument("uri")
    verify.set_defaults(handler=_verify)

    sample = sub.add_parser("sample", help="draw one episode and show it")
    sample.add_argument("uri", nargs="?", default=DEFAULT_SAMPLE_URI, help=f"shard set (default {DEFAULT_SAMPLE_URI})")
    for name, field in EpisodeConfig.model_fields.items():
        if field.annotation is bool:
            sample.add_argument(f"--{name}", action="store_true", default=None, help=field.description)
        elif name == "affine":
            sample.add_argument("--affine", nargs=3, type=float, metavar=("DEGREES", "SCALE", "SHEAR"), help=field.description)
        elif name == "variable":
            sample.add_argument("--variable", type=int, metavar="MIN_WAYS", help="Meta-Dataset's variable way (MIN_WAYS to "
                                "--ways) and unequal shots (1 to --shots per class), drawn per step")
        else:
            sample.add_argument(f"--{name}", type=int, help=field.description)
    sample.add_argument("--groups", nargs="+", help="sample only these groups")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--step", type=int, default=0)
    sample.add_argument("--task", type=int, default=0, help="task index within the step")
    sample.add_argument("--plot", type=Path, help="also save the episode as a PNG grid")
    sample.set_defaults(handler=_sample)


# `metadist data import KIND`: the benchmarks with canonical class splits (metadist.data.importers).
BENCHMARKS = {
    "mini-imagenet": ("mini-ImageNet (Ravi & Larochelle split) from ILSVRC2012 train images",
                      "ImageNet train folder (<wnid>/<wnid>_<n>.JPEG) or Ravi & Larochelle's images/ folder"),
    "tiered-imagenet": ("tiered-ImageNet (Ren et al. split) from ILSVRC2012 train images",
                        "ImageNet train folder (<wnid>/<wnid>_<n>.JPEG)"),
    "cifar-fs": ("CIFAR-FS (Bertinetto et al. split) from CIFAR-100's binary version", "cifar-100-binary.tar.gz or its folder"),
    "fc100": ("FC100 (Oreshkin et al. split) from CIFAR-100's binary version", "cifar-100-binary.tar.gz or its folder"),
    "cub": ("CUB-200-2011 (Chen et al. 100/50/50 split) from its tarball", "CUB_200_2011.tgz or its folder"),
}


def _add_output_args(parser: argparse.ArgumentParser, out_help: str = "shard set URI to create (local, file://, memory://, s3:// ...)") -> None:
    parser.add_argument("--out", required=True, help=out_help)
    parser.add_argument("--format", choices=["arrow", "parquet"], default="arrow", help="shard file format (default arrow IPC)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing shard set at --out")


def _import_omniglot(args) -> None:
    from dataclasses import replace

    from metadist.data.importers.omniglot import MAML_PREPROCESSING, import_omniglot

    preprocessing = MAML_PREPROCESSING
    if args.image_size:
        preprocessing = replace(preprocessing, size=(args.image_size, args.image_size))
    manifest = import_omniglot(args.inputs, args.out, preprocessing=preprocessing, file_format=args.format, overwrite=args.overwrite)
    _print_summary(args.out, manifest)


def _import_folder(args) -> None:
    from metadist.data.images import ImagePreprocessing
    from metadist.data.importers.image_folder import import_image_folder

    size = args.image_size * 2 if len(args.image_size) == 1 else args.image_size[:2]
    preprocessing = ImagePreprocessing(mode=args.mode, size=tuple(size), resample=args.resample)
    manifest = import_image_folder(
        args.root, args.out, preprocessing=preprocessing, store=args.store, name=args.name,
        file_format=args.format, overwrite=args.overwrite,
    )
    _print_summary(args.out, manifest)


def _import_benchmark(args) -> None:
    from metadist.data.importers import import_cifar_fs, import_cub, import_fc100, import_mini_imagenet, import_tiered_imagenet
    from metadist.data.importers.common import benchmark_preprocessing, split_uri
    from metadist.errors import ConfigError

    if (args.input is None) == (args.input_option is None):
        raise ConfigError(f"data import {args.kind}: give the input once, as INPUT or --inputs INPUT")
    if args.size < 1:
        raise ConfigError(f"data import {args.kind}: --size must be positive, got {args.size}")
    try:
        preprocessing = benchmark_preprocessing(args.size, args.resample)
    except ValueError as exc:
        raise ConfigError(f"data import {args.kind}: {exc}") from None
    importers: dict[str, Callable[..., dict]] = {
        "mini-imagenet": lambda **kw: import_mini_imagenet(images=args.images, **kw),
        "tiered-imagenet": import_tiered_imagenet,
        "cifar-fs": import_cifar_fs,
        "fc100": import_fc100,
        "cub": lambda **kw: import_cub(bounding_boxes=args.bounding_boxes, **kw),
    }
    manifests = importers[args.kind](
        root=args.input or args.input_option, out=args.out, preprocessing=preprocessing, file_format=args.format,
        overwrite=args.overwrite,
    )
    for split, manifest in manifests.items():
        _print_summary(split_uri(args.out, split), manifest)


def _fetch(args) -> None:
    from metadist.data.fetch import OMNIGLOT_BASE_URL, fetch_omniglot

    out = args.out or str(cache_dir() / "shards" / "omniglot-full")
    download_dir = args.download_dir or cache_dir() / "downloads" / "omniglot"
    manifest = fetch_omniglot(download_dir, out, base_url=args.base_url or OMNIGLOT_BASE_URL, file_format=args.format, overwrite=args.overwrite)
    _print_summary(out, manifest)


def _print_summary(uri: str, manifest) -> None:
    groups = manifest.groups()
    print(f"{uri}: {len(manifest.classes)} classes in {len(groups)} groups, {manifest.num_examples} examples, "
          f"{len(manifest.shards)} {manifest.file_format} shard(s); example {manifest.example_encoding} {list(manifest.example_shape)}")


def _info(args) -> None:
    from metadist.data.shardset import ShardSet

    shards = ShardSet(resolve_uri(args.uri))
    m = shards.manifest
    if args.json:
        print(m.to_json(), end="")
        return
    _print_summary(shards.uri, m)
    print(f"dataset: {json.dumps(m.dataset, ensure_ascii=False)}")
    print(f"preprocessing: {json.dumps(m.preprocessing)}")
    counts = np.array([c.count for c in m.classes])
    print(f"examples per class: min {counts.min()}, median {int(np.median(counts))}, max {counts.max()}")
    for group, n in m.groups().items():
        print(f"  {group}: {n} classes")


def _verify(args) -> None:
    from metadist.data.shardset import ShardSet

    shards = ShardSet(resolve_uri(args.uri))
    shards.verify(progress=True)
    print(f"{shards.uri}: OK ({len(shards.manifest.shards)} shards, {len(shards.manifest.classes)} classes)")


def _sample(args) -> None:
    from metadist.data.sampler import EpisodeSampler
    from metadist.data.shardset import ShardSet

    # Only the flags given override the configuration's defaults (defined once, in metadist.config).
    given = {k: getattr(args, k) for k in EpisodeConfig.model_fields if getattr(args, k) is not None}
    if "affine" in given:
        given["affine"] = dict(zip(("degrees", "scale", "shear"), given["affine"]))
    if "variable" in given:
        given["variable"] = {"min_ways": given["variable"]}
    episode = EpisodeConfig(**given)
    TrainConfig(seed=args.seed)  # the seed follows a job's rules (train.seed)
    shards = ShardSet(resolve_uri(args.uri))
    sampler = EpisodeSampler(shards, episode, split=SplitConfig(groups=args.groups), seed=args.seed)
    shape = sampler.shape(args.step)
    batch = sampler.sample(args.step, [args.task], shape)
    names = [
        shards.manifest.classes[int(c)].name + (" mirrored" if m else "") + (f" rotated {int(r) * 90}°" if r else "")
        for c, r, m in zip(batch.class_index[0], batch.quarter_turns[0], batch.mirrored[0])
    ]
    print(f"episode (seed {args.seed}, step {args.step}, task {args.task}) from {shards.uri}")
    shots = f"{shape.most_shots}-shot" if shape.equal_shots else f"{shape.support_size}-example support"
    print(f"  {shape.ways}-way {shots}, {shape.queries} queries per class; "
          f"support_x {list(batch.support_x.shape)}, query_x {list(batch.query_x.shape)}")
    for label, (name, k) in enumerate(zip(names, shape.shots)):
        print(f"  label {label}: {name}" + ("" if shape.equal_shots else f" ({k} shots)"))
    firsts = np.cumsum((0,) + shape.shots[:-1])  # each class's first support example
    print(_ascii_row(batch.support_x[0, firsts][:, 0].numpy()))
    if args.plot:
        _save_grid(batch, shape, args.plot)
        print(f"saved {args.plot}")


def _ascii_row(images: np.ndarray, width: int = 14) -> str:
    """One support image per class, side by side, as characters (2×2 pixels per character)."""
    h, w = images.shape[1:]
    step = max(1, w // width)
    rows = []
    for y in range(0, h, 2 * step):
        line = []
        for img in images:
            cells = img[y : y + 2 * step, :].reshape(-1, w)
            line.append("".join(" .:#"[min(3, int(cells[:, x : x + step].max() * 4))] for x in range(0, w, step)))
        rows.append("  " + "  ".join(line))
    return "\n".join(rows)


def _save_grid(batch, shape: EpisodeShape, path: Path) -> None:
    """Rows are classes: the support examples, a gap, then the queries."""
    from PIL import Image

    n, k, q = shape.ways, shape.most_shots, shape.queries
    c, h, w = batch.support_x.shape[2:]
    pad = 2
    grid = np.full((n * (h + pad), (k + q + 1) * (w + pad), c), 255, np.uint8)
    support = np.split(batch.support_x[0].numpy(), np.cumsum(shape.shots)[:-1])
    query = batch.query_x[0].reshape(n, q, c, h, w).numpy()
    for i in range(n):
        for j, img in enumerate(list(support[i]) + [None] * (k - shape.shots[i] + 1) + list(query[i])):
            if img is not None:
                grid[i * (h + pad) : i * (h + pad) + h, j * (w + pad) : j * (w + pad) + w] = (img.transpose(1, 2, 0) * 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid.squeeze(-1) if c == 1 else grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.Resampling.NEAREST).save(path)
