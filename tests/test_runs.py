"""Run integrity through the command line: what a resume checks (settings, weights, data),
what a run folder records and may hold, what a failed or concurrent start leaves behind, and
an ``aliases.json`` that is enough to re-score and apply its aliases."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from mlx_alias.files import OutputError, atomic_write
from mlx_alias.search import driver
from mlx_alias.search.alias_file import Alias
from mlx_alias.search.report import apply_hint, markdown_text
from mlx_alias.search.run_folder import claim

from clitools import HIDDEN, clean_failure, run_cli, search_args

BUDGET = ("--budget", 40)


@pytest.fixture(scope="module")
def finished(search_weights, planted, tmp_path_factory) -> Path:
    """A finished run (``run/``) on its own copy of the planted dataset (``dataset/``), with its
    feature cache (``cache/``), all in one folder."""
    root = tmp_path_factory.mktemp("finished")
    shutil.copytree(planted[0], root / "dataset")
    result = run_cli(*search_args(search_weights, root / "dataset", root / "run", planted[1], root, *BUDGET))
    assert result.exit_code == 0, result.output
    return root


@pytest.fixture
def copy(finished, tmp_path) -> Path:
    """A private copy of ``finished``, to change."""
    shutil.copytree(finished, tmp_path / "copy")
    return tmp_path / "copy"


def resume(search_weights, root: Path, threshold: float, *extra):
    return run_cli(
        *search_args(search_weights, root / "dataset", root / "run", threshold, root, *BUDGET, *extra, "--resume")
    )


def test_resume_of_the_same_run_after_a_move(search_weights, planted, copy, tmp_path):
    """A resume compares contents, not paths: the run and its data moved together resume."""
    moved = tmp_path / "moved"
    copy.rename(moved)
    before = (moved / "run" / "aliases.json").read_text()
    result = resume(search_weights, moved, planted[1])
    assert result.exit_code == 0, result.output
    assert (moved / "run" / "aliases.json").read_text() == before


def test_resume_refuses_changed_annotations(search_weights, planted, copy):
    path = copy / "dataset" / "annotations.json"
    data = json.loads(path.read_text())
    data["annotations"] = data["annotations"][:-1]
    path.write_text(json.dumps(data))
    clean_failure(
        resume(search_weights, copy, planted[1]), "the dataset differs: the annotation file's contents differ"
    )


def test_resume_refuses_a_replaced_image(search_weights, planted, copy):
    path = copy / "dataset" / "images" / "synthetic-03.png"
    Image.open(path).transpose(Image.Transpose.ROTATE_180).save(path)  # same size, other pixels
    clean_failure(
        resume(search_weights, copy, planted[1]), "the dataset differs: 1 image file changed (synthetic-03.png)"
    )


def test_resume_names_the_settings_that_differ(search_weights, planted, copy, mlx_weights):
    result = run_cli(
        *search_args(
            search_weights, copy / "dataset", copy / "run", planted[1], copy, "--budget", 50, "--seed", 3, "--resume"
        )
    )
    clean_failure(result, "search.budget was 40, now 50; search.seed was 0, now 3")
    args = search_args(search_weights, copy / "dataset", copy / "run", planted[1], copy, *BUDGET, "--resume")
    assert args[1] == "--weights"
    args[2] = mlx_weights  # another tiny model
    clean_failure(run_cli(*args), "the weights differ (sha256 ")


def test_damaged_run_files_are_named(search_weights, planted, copy):
    for name in ("run.json", "aliases.json"):
        path = copy / "run" / name
        saved = path.read_bytes()
        path.write_bytes(saved[: len(saved) // 2])
        clean_failure(resume(search_weights, copy, planted[1]), f"{path} is damaged (not JSON at line")
        path.write_bytes(saved)


def test_a_damaged_checkpoint_on_resume_is_one_sentence(search_weights, planted, tmp_path, monkeypatch):
    original = driver.save_state

    def killed(path, state):
        original(path, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(driver, "save_state", killed)
    args = search_args(search_weights, planted[0], tmp_path / "run", planted[1], tmp_path, *BUDGET)
    clean_failure(run_cli(*args), "can be resumed")
    monkeypatch.setattr(driver, "save_state", original)
    (state,) = (tmp_path / "run" / "state").iterdir()
    state.write_bytes(state.read_bytes()[:100])
    clean_failure(
        run_cli(*args, "--resume"),
        f"the checkpoint {state} cannot be read: it is not a whole safetensors "
        "file (truncated, or another kind of file); delete it to restart the "
        "2-token search of category 1 from its beginning",
    )
    state.unlink()
    assert run_cli(*args, "--resume").exit_code == 0


def test_the_alias_file_stands_alone(search_weights, planted, finished, tmp_path):
    """Threshold, split, digests: enough to re-score and apply each alias with no other input."""
    dataset, threshold = planted
    aliases = finished / "run" / "aliases.json"
    document = json.loads(aliases.read_text())
    assert document["objective"]["threshold"] == threshold
    assert (document["holdout_fraction"], document["seed"], document["skipped"]) == (0.34, 0, [])
    annotations = (finished / "dataset" / "annotations.json").read_bytes()
    assert document["dataset"]["annotations_sha256"] == hashlib.sha256(annotations).hexdigest()
    assert document["dataset"]["path"] == "../dataset/annotations.json"  # beside the run: relative to it
    assert (finished / "run" / document["dataset"]["path"]).is_file()
    assert Path(document["weights"]["path"]) == (search_weights / "mlx").absolute()
    entry = document["aliases"][0]

    # segment applies the alias by its tokens, at the file's threshold
    image = finished / "dataset" / "images" / "synthetic-00.png"

    def segment(category: int, out: Path):
        args = ("--image", image, "--aliases", aliases, "--category", category, "--out", out)
        return run_cli("segment", "--weights", search_weights / "mlx", *args)

    result = segment(1, tmp_path / "alias.png")
    assert result.exit_code == 0, result.output
    applied = json.loads((tmp_path / "alias.png").with_suffix(".json").read_text())
    assert applied["tokens"] == entry["tokens"] and applied["threshold"] == threshold
    clean_failure(
        segment(5, tmp_path / "x.png"),
        "hold no alias for category 5",
    )

    # a prompt scored beside the aliases is scored on the run's split, at its threshold
    both = run_cli(
        "evaluate",
        "--weights",
        search_weights / "mlx",
        "--dataset",
        finished / "dataset",
        "--aliases",
        aliases,
        "--prompt",
        HIDDEN,
        "--json",
        "--cache",
        tmp_path,
    )
    assert both.exit_code == 0, both.output
    alias_row, hidden_row = [json.loads(line) for line in both.output.splitlines() if line.startswith("{")]
    assert alias_row["score"] == pytest.approx(entry["holdout_score"], abs=1e-6)
    alone = run_cli(
        "evaluate",
        "--weights",
        search_weights / "mlx",
        "--dataset",
        finished / "dataset",
        "--prompt",
        HIDDEN,
        "--holdout",
        0.34,
        "--seed",
        0,
        "--threshold",
        threshold,
        "--json",
        "--cache",
        tmp_path,
    )
    assert hidden_row["score"] == pytest.approx(json.loads(alone.output.splitlines()[-1])["score"], abs=1e-6)


def test_report_escapes_alias_text_and_says_how_to_apply_it():
    text = "a|b\r`c`\ufffd"
    shown = markdown_text(text)
    assert "\r" not in shown and "\\|" in shown and "\\`c\\`" in shown and "\\\\r" in shown
    alias = Alias(category_id=4, tokens=(8848, 40037), roundtrip=False)
    hint = apply_hint(alias)
    assert "--aliases aliases.json --category 4" in hint and "--tokens 8848,40037" in hint
    assert "apply it by its tokens, not its text" in hint
    assert "typed as a prompt" in apply_hint(dataclasses.replace(alias, roundtrip=True))


def _truncate_pixels(path: Path) -> None:
    """Cut a PNG inside its pixel data: the header (and so the size check) still reads."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with Image.open(path) as im:
        assert im.size  # the header check passes


def test_a_failed_start_leaves_nothing_and_the_rerun_starts(search_weights, planted, tmp_path):
    dataset = tmp_path / "dataset"
    shutil.copytree(planted[0], dataset)
    image = dataset / "images" / "synthetic-04.png"
    saved = image.read_bytes()
    _truncate_pixels(image)
    args = search_args(search_weights, dataset, tmp_path / "run", planted[1], tmp_path, *BUDGET)
    clean_failure(run_cli(*args), "file is truncated, corrupt or not an image")
    assert not (tmp_path / "run").exists()
    (tmp_path / "run").mkdir()  # a folder the user made is kept, empty
    clean_failure(run_cli(*args), "file is truncated, corrupt or not an image")
    assert list((tmp_path / "run").iterdir()) == []
    image.write_bytes(saved)
    result = run_cli(*args)
    assert result.exit_code == 0, result.output


def test_an_empty_category_is_skipped_unless_named(search_weights, planted, tmp_path):
    dataset = tmp_path / "dataset"
    shutil.copytree(planted[0], dataset)
    data = json.loads((dataset / "annotations.json").read_text())
    data["categories"].append({"id": 2, "name": "ghost"})
    (dataset / "annotations.json").write_text(json.dumps(data))
    result = run_cli(*search_args(search_weights, dataset, tmp_path / "run", planted[1], tmp_path, *BUDGET))
    assert result.exit_code == 0, result.output
    assert "category 2 ('ghost'): skipped, it has no instances to learn from" in result.output
    document = json.loads((tmp_path / "run" / "aliases.json").read_text())
    assert [e["category_id"] for e in document["aliases"]] == [1]
    assert [(s["category_id"], s["name"]) for s in document["skipped"]] == [(2, "ghost")]
    assert "## Skipped categories" in (tmp_path / "run" / "report.md").read_text()
    named = run_cli(
        *search_args(search_weights, dataset, tmp_path / "named", planted[1], tmp_path, *BUDGET, "--categories", "1,2")
    )
    clean_failure(named, "category 2 ('ghost') has no instances to learn from")
    assert not (tmp_path / "named").exists()


def test_categories_flag(search_weights, planted, tmp_path):
    args = search_args(search_weights, planted[0], tmp_path / "run", planted[1], tmp_path, *BUDGET)
    clean_failure(run_cli(*args, "--categories", ","), "--categories names no category id")
    assert not (tmp_path / "run").exists()
    result = run_cli(*args, "--categories", "1,1")
    assert result.exit_code == 0, result.output
    assert len(json.loads((tmp_path / "run" / "aliases.json").read_text())["aliases"]) == 1


def test_a_run_folder_in_use_is_refused(search_weights, planted, finished, tmp_path):
    """Another process's run (here: a lock held through another open file) is never entered,
    neither by a resume nor by a fresh start racing it."""
    with claim(finished / "run", resume=True):
        clean_failure(resume(search_weights, finished, planted[1]), "is in use by another mlx-alias process")
    fresh = tmp_path / "fresh"
    with claim(fresh, resume=False):
        clean_failure(
            run_cli(*search_args(search_weights, planted[0], fresh, planted[1], tmp_path, *BUDGET)),
            f"{fresh} is in use by another mlx-alias process (pid {os.getpid()})",
        )


def test_demo_run_records_paths_valid_after_its_rename(tmp_path):
    """The demo builds in a staging folder renamed at the end: its run must name the final
    paths, and resume from them."""
    out = tmp_path / "demo"
    assert run_cli("demo", "--out", out).exit_code == 0  # its budget must pay for its sweep
    recorded = json.loads((out / "run" / "run.json").read_text())
    for text in ((out / "run" / "run.json").read_text(), (out / "run" / "report.md").read_text()):
        assert ".tmp" not in text
    assert (out / "run" / recorded["dataset"]["path"]).resolve() == (out / "dataset" / "annotations.json").resolve()
    assert (out / "run" / recorded["weights"]["path"]).resolve() == (out / "weights").resolve()
    search = recorded["search"]
    result = run_cli(
        "search",
        "--weights",
        out / "weights",
        "--dataset",
        out / "dataset",
        "--out",
        out / "run",
        "--length",
        search["lengths"][0],
        "--budget",
        search["budget"],
        "--holdout",
        search["holdout_fraction"],
        "--threshold",
        search["objective"]["threshold"],
        "--phases",
        ",".join(search["phases"]),
        "--cache",
        out / "cache",
        "--resume",
    )
    assert result.exit_code == 0, result.output


def test_plant_that_plants_nothing_says_so(search_weights, planted, tmp_path):
    result = run_cli(
        "plant",
        "--weights",
        search_weights / "mlx",
        "--images",
        planted[0] / "images",
        "--prompt",
        HIDDEN,
        "--out",
        tmp_path / "none",
        "--threshold",
        1,
    )
    clean_failure(result, "predicts no instance above the threshold 1")
    assert "try a --threshold below" in result.output and not (tmp_path / "none").exists()


def test_bad_prompts_are_refused_by_evaluate(search_weights, planted, tmp_path):
    for prompt, phrase in ((" ", "the prompt is empty"), ("word " * 40, "SAM3 reads at most 30")):
        clean_failure(
            run_cli(
                "evaluate",
                "--weights",
                search_weights / "mlx",
                "--dataset",
                planted[0],
                "--prompt",
                prompt,
                "--cache",
                tmp_path,
            ),
            phrase,
        )


def test_write_failures_name_the_users_path(tmp_path):
    def disk_full(tmp: str) -> None:
        Path(tmp).write_bytes(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    target = tmp_path / "aliases.json"
    with pytest.raises(OutputError, match=f"cannot write {target} \\(No space left on device\\)"):
        atomic_write(target, disk_full)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OutputError, match=f"cannot write {tmp_path / 'missing' / 'x.json'} "):
        atomic_write(tmp_path / "missing" / "x.json", lambda tmp: None)
