"""`metadist data ...` end to end through the console entry point."""

from __future__ import annotations

import json
import subprocess
import sys

from metadist.cli import main


def test_sample_prints_an_episode_and_saves_a_grid(tmp_path, small1_uri, capsys):
    png = tmp_path / "episode.png"
    assert main(["data", "sample", small1_uri, "--ways", "3", "--rotations", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "3-way 1-shot, 5 queries per class" in out and "label 2:" in out
    assert png.stat().st_size > 0


def test_sample_shows_mirrored_classes_and_takes_every_augmentation(small1_uri, capsys):
    args = ["data", "sample", small1_uri, "--ways", "40", "--rotations", "--reflections", "--shift", "2", "--affine", "10", "0.1", "5"]
    assert main(args) == 0
    labels = [line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("label ")]
    assert len(labels) == 40
    assert any(" mirrored" in line for line in labels) and any(" mirrored" not in line for line in labels)
    assert any("rotated" in line for line in labels)


def test_sample_shows_a_variable_way_variable_shot_episode(tmp_path, small1_uri, capsys):
    from metadist.config import EpisodeConfig
    from metadist.data import EpisodeSampler, ShardSet

    png = tmp_path / "episode.png"
    assert main(["data", "sample", small1_uri, "--ways", "12", "--shots", "6", "--variable", "4", "--step", "3",
                 "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    shape = EpisodeSampler(ShardSet(small1_uri), EpisodeConfig(ways=12, shots=6, variable={"min_ways": 4}), seed=0).shape(3)
    assert f"{shape.ways}-way {shape.support_size}-example support, 5 queries per class" in out
    labels = [line for line in out.splitlines() if line.strip().startswith("label ")]
    assert [int(line.rsplit("(", 1)[1].split()[0]) for line in labels] == list(shape.shots)
    assert png.stat().st_size > 0


def test_import_info_verify(tmp_path, tiny_omniglot_zip, capsys):
    out_uri = str(tmp_path / "shards")
    assert main(["data", "import", "omniglot", str(tiny_omniglot_zip), "--out", out_uri, "--format", "parquet"]) == 0
    assert "7 classes in 2 groups, 140 examples, 1 parquet shard(s)" in capsys.readouterr().out
    assert main(["data", "info", out_uri]) == 0
    assert "Alpha: 3 classes" in capsys.readouterr().out
    assert main(["data", "info", out_uri, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["num_classes"] == 7
    assert main(["data", "verify", out_uri]) == 0
    assert "OK" in capsys.readouterr().out


def test_console_script_runs_the_default_episode():
    result = subprocess.run([sys.executable, "-m", "metadist", "data", "sample", "--ways", "5"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "5-way 1-shot" in result.stdout and "omniglot-small1" in result.stdout
