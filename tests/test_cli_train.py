"""`metadist train | eval | predict` end to end on tiny jobs, and their errors."""

from __future__ import annotations

import json
import shutil

import pytest

from metadist.cli import main
from metadist.core import checkpoint as ckpt_io
from tests.helpers import train_tiny_cli
from tests.synthetic import drawing


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, small1_uri, small2_uri):
    tmp = tmp_path_factory.mktemp("cli-train")
    return {
        "protonet": train_tiny_cli(tmp, small1_uri, small2_uri, "proto", "algorithm.name=protonet"),
        "maml": train_tiny_cli(tmp, small1_uri, small2_uri, "maml", "data.episode.ways=3", "data.test_episode.ways=3"),
        "sinusoid": train_tiny_cli(tmp, small1_uri, small2_uri, "sin", "data.regression={family: sinusoid}", "data.train=null",
                           "data.test=null", "model.name=mlp", "algorithm.prototype_head=false", "algorithm.eval_shift=0"),
    }


def _support(tmp_path, classes=3, shots=1, size=40):
    root = tmp_path / "support"
    for c in range(classes):
        (root / f"class_{c}").mkdir(parents=True)
        for s in range(shots):
            (root / f"class_{c}" / f"{s}.png").write_bytes(drawing(100 * c + s, size=size))
    return root


def test_train_prints_checkpoint_and_test_accuracy(checkpoints, capsys, tmp_path, small1_uri, small2_uri):
    train_tiny_cli(tmp_path, small1_uri, small2_uri, "again", "algorithm.name=protonet")
    out = capsys.readouterr().out
    assert "checkpoint:" in out and "test accuracy_after:" in out and "(8 episodes)" in out


def test_print_config_shows_the_resolved_job(capsys):
    assert main(["train", "--print-config", "--set", "train.steps=7"]) == 0
    out = capsys.readouterr().out
    assert "steps: 7" in out and "bundled://omniglot-small1" in out and "pretrain:\n  epochs: 20" in out


def test_eval_reports_before_and_after_with_intervals(checkpoints, capsys):
    assert main(["eval", "--checkpoint", checkpoints["maml"], "--episodes", "12", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"accuracy_before", "accuracy_after", "loss_before", "loss_after"}
    assert result["accuracy_after"]["episodes"] == 12 and result["accuracy_after"]["ci95"] >= 0
    assert main(["eval", "--checkpoint", checkpoints["sinusoid"], "--episodes", "10"]) == 0
    assert "loss_after" in capsys.readouterr().out


def test_eval_refuses_more_ways_than_the_head_has(checkpoints, capsys):
    assert main(["eval", "--checkpoint", checkpoints["maml"], "--ways", "5"]) == 2
    assert "--ways 5" in capsys.readouterr().err


def test_predict_classifies_queries_from_folders_of_any_image_size(checkpoints, tmp_path, capsys):
    support = _support(tmp_path, size=40)
    queries = tmp_path / "queries"
    queries.mkdir()
    for c in range(3):  # the support images themselves, at another size and format: each must find its class
        shutil.copy(support / f"class_{c}" / "0.png", queries / f"q{c}.png")
    assert main(["predict", "--checkpoint", checkpoints["protonet"], "--support", str(support), "--query", str(queries)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["label"] for line in lines] == ["class_0", "class_1", "class_2"]
    assert [line["query"].rsplit("/", 1)[-1] for line in lines] == ["q0.png", "q1.png", "q2.png"]
    for line in lines:
        assert set(line["scores"]) == {"class_0", "class_1", "class_2"}
        assert sum(line["scores"].values()) == pytest.approx(1.0)


def test_predict_with_a_maml_checkpoint_uses_fewer_classes_than_its_head(checkpoints, tmp_path, capsys):
    support = _support(tmp_path, classes=2, shots=2)
    query = support / "class_1" / "0.png"
    assert main(["predict", "--checkpoint", checkpoints["maml"], "--support", str(support), "--query", str(query)]) == 0
    line = json.loads(capsys.readouterr().out)
    assert set(line["scores"]) == {"class_0", "class_1"}


@pytest.mark.parametrize("problem", ["one_class", "unreadable", "text_query", "too_many_classes", "regression", "empty_class"])
def test_predict_errors_name_what_is_wrong(checkpoints, tmp_path, capsys, problem):
    checkpoint = checkpoints["maml"]
    support = _support(tmp_path)
    query = [str(support / "class_0" / "0.png")]
    expect = ""
    if problem == "one_class":
        shutil.rmtree(support / "class_1"), shutil.rmtree(support / "class_2")
        expect = "at least 2"
    elif problem == "unreadable":
        (support / "class_1" / "broken.png").write_bytes(b"not a png")
        expect = "broken.png: not a readable image"
    elif problem == "text_query":
        (tmp_path / "notes.txt").write_text("hello")
        query = [str(tmp_path / "notes.txt")]
        expect = "notes.txt: not a readable image"
    elif problem == "too_many_classes":
        support = _support(tmp_path / "big", classes=4)
        expect = "trained 3-way"
    elif problem == "regression":
        checkpoint = checkpoints["sinusoid"]
        expect = "regression model"
    elif problem == "empty_class":
        (support / "class_9").mkdir()
        expect = "'class_9' holds no files"
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    assert main(["predict", "--checkpoint", checkpoint, "--support", str(support), "--query", *query]) == 2
    err = capsys.readouterr().err
    assert expect in err, err
    assert "Traceback" not in err
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before  # nothing touched


def test_predict_refuses_a_checkpoint_whose_parameters_do_not_fit(checkpoints, tmp_path, capsys):
    saved = ckpt_io.load(checkpoints["maml"])
    saved.meta_params.pop("head.bias")
    bad = ckpt_io.save(saved, str(tmp_path / "bad"))
    assert main(["predict", "--checkpoint", bad, "--support", str(_support(tmp_path)), "--query", str(tmp_path)]) == 2
    assert "missing ['head.bias']" in capsys.readouterr().err
