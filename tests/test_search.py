"""plant, search (with resume), evaluate (MLX and torch) and demo, end to end at tiny size."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mlx_alias.plant import TOP_FRACTION, gap_threshold, planting_rule, synthetic_images

from clitools import HIDDEN, clean_failure, run_cli, search_args


def test_plant_writes_a_loadable_dataset(planted):
    from mlx_alias.data.coco import load_dataset

    dataset, threshold = planted
    data = load_dataset(dataset)
    assert list(data.categories) == [1] and data.categories[1].name is None  # the prompt stays hidden
    assert data.positives(1), "the hidden prompt predicts instances somewhere"
    hidden = json.loads((dataset / "plant.json").read_text())
    assert hidden["prompt"] == HIDDEN and hidden["threshold"] == threshold


def test_synthetic_images_continue_their_stream(tmp_path):
    """A benchmark's unseen test images are the stream's later images: the same pictures, and
    names that do not clash with the first ones'."""
    whole = synthetic_images(tmp_path / "whole", 5, seed=3)
    later = synthetic_images(tmp_path / "later", 2, seed=3, first=3)
    assert [p.name for p in later] == [p.name for p in whole[3:]]
    assert [p.read_bytes() for p in later] == [p.read_bytes() for p in whole[3:]]


def test_gap_threshold_cuts_at_the_widest_gap_near_the_fraction():
    rng = np.random.default_rng(0)
    dense = rng.uniform(0.30, 0.31, (11, 18))  # a near-continuous run, like a random model's scores
    top = rng.uniform(0.35, 0.36, (11, 2))  # 2 per image, 22 of 220 above a gap of 0.04
    images = list(np.concatenate([dense, top], axis=1))
    threshold = gap_threshold(images, 0.1, 5)
    assert threshold == pytest.approx((dense.max() + top.min()) / 2)
    # a wider gap further out (only 2 of 220 above it) is outside the window and ignored
    images[0][-1], images[1][-1] = 0.9, 0.95
    assert gap_threshold(images, 0.1, 5) == pytest.approx(threshold, abs=0.002)


def test_gap_threshold_plants_at_most_max_instances_per_image():
    rng = np.random.default_rng(1)
    images = list(rng.uniform(0.30, 0.31, (11, 20)))
    for i, image in enumerate(images):  # the top cluster: 6 queries on image 0, 2 on each other
        image[: 6 if i == 0 else 2] = rng.uniform(0.35, 0.36, 6 if i == 0 else 2)
    threshold = gap_threshold(images, 0.1, 5)
    # the gap below the cluster would keep 6 on image 0: the cut falls inside the cluster instead
    assert 0.35 < threshold < 0.36 and (images[0] > threshold).sum() <= 5
    assert gap_threshold(images, 0.1, 6) < 0.35
    images[0][:12] = 0.5  # 12 on one image above any cut in the window: no planting fits
    with pytest.raises(ValueError, match="at most 5 on any image"):
        gap_threshold(images, 0.1, 5)


def test_planted_instances_clear_the_threshold_by_a_margin(search_model, planted):
    """The point of cutting in a gap: no query of the hidden prompt sits near the threshold,
    so a neighbouring prompt that shifts scores a little does not flip instances."""
    import mlx.core as mx

    from mlx_alias.image import load_image, preprocess
    from mlx_alias.tokenizer import load_tokenizer

    dataset, threshold = planted
    text = search_model.encode_text(mx.array(load_tokenizer()(HIDDEN)))
    scores = []
    for path in sorted((dataset.parent / "images").glob("*.png")):
        image = preprocess(load_image(path), search_model.cfg.vision.image_size)[None]
        scores.append(np.array(search_model.ground(search_model.encode_image(mx.array(image)), text).scores[0]))
    scores = np.concatenate(scores)
    above = (scores > threshold).mean()
    assert TOP_FRACTION * 0.5 < above <= TOP_FRACTION * 1.5
    percentile = np.quantile(scores, 1 - TOP_FRACTION)
    assert np.abs(scores - threshold).min() >= np.abs(scores - percentile).min()


def test_plant_margin_leaves_near_threshold_queries_to_crowd_regions(search_weights, search_model, planted, tmp_path):
    """With ``--margin``, the queries that the hidden prompt decides by less than it become crowd
    regions: the hidden prompt then finds every instance, and what else it predicts lies in them
    and is dropped (precision 1), though it does predict there."""
    from mlx_alias.data.coco import load_dataset
    from mlx_alias.prediction import make_prompt
    from mlx_alias.search.cache import FeatureCache
    from mlx_alias.search.objective import ObjectiveConfig
    from mlx_alias.search.task import scorer_for

    dataset, threshold = planted
    hidden = make_prompt(HIDDEN, None)
    paths = sorted((dataset.parent / "images").glob("*.png"))
    _, margin = planting_rule(search_model, paths, hidden.ids, 0.1)
    result = run_cli(
        "plant",
        "--weights",
        search_weights / "mlx",
        "--images",
        dataset.parent / "images",
        "--prompt",
        HIDDEN,
        "--out",
        tmp_path / "margin",
        "--threshold",
        threshold,
        "--margin",
        margin,
    )
    assert result.exit_code == 0 and "crowd regions" in result.output, result.output
    annotations = json.loads((tmp_path / "margin" / "annotations.json").read_text())["annotations"]
    crowd = [a["score"] for a in annotations if a["iscrowd"]]
    clear = [a["score"] for a in annotations if not a["iscrowd"]]
    assert crowd and clear and json.loads((tmp_path / "margin" / "plant.json").read_text())["margin"] == margin
    assert all(
        threshold - margin - 1e-4 <= s <= threshold + margin + 1e-4 for s in crowd
    )  # scores are rounded to 4 digits
    assert min(clear) >= threshold + margin - 1e-4
    data = load_dataset(tmp_path / "margin")
    images = sorted(data.positives(1) + data.negatives(1))
    scorer = scorer_for(
        search_model,
        FeatureCache(search_model, search_weights / "mlx", None),
        data,
        1,
        images,
        ObjectiveConfig(threshold=threshold),
        8,
    )
    found = scorer.exact(hidden.ids)[0]
    assert found.recall == 1.0 and found.precision == 1.0 and found.false_positive_rate == 0.0
    positives = set(data.positives(1))
    predicted_in_crowds = sum(
        1 for a in annotations if a["iscrowd"] and a["image_id"] in positives and a["score"] > threshold
    )
    assert predicted_in_crowds > 0  # so the drop was needed for that precision


def test_evaluate_mlx_and_torch_agree(search_weights, planted, tmp_path):
    dataset, threshold = planted
    common = [
        "evaluate",
        "--weights",
        search_weights / "mlx",
        "--dataset",
        dataset,
        "--prompt",
        HIDDEN,
        "--prompt",
        "a red car",
        "--split",
        "all",
        "--threshold",
        threshold,
        "--json",
        "--cache",
        tmp_path,
    ]
    mine = run_cli(*common)
    ref = run_cli(*common, "--backend", "torch", "--checkpoint", search_weights / "sam3")
    assert mine.exit_code == 0 and ref.exit_code == 0, mine.output + ref.output
    rows = [json.loads(line) for line in mine.output.splitlines() if line.startswith("{")]
    ref_rows = [json.loads(line) for line in ref.output.splitlines() if line.startswith("{")]
    assert [set(r) for r in rows] == [{"category_id", "text", "tokens", "split", "score"}] * 2
    assert rows[0]["score"] > rows[1]["score"]  # the hidden prompt beats another one
    for a, b in zip(rows, ref_rows, strict=True):
        assert a["score"] == pytest.approx(b["score"], abs=1e-6)


def test_search_then_evaluate(search_weights, planted, tmp_path):
    dataset, threshold = planted
    out = tmp_path / "run"
    result = run_cli(
        *search_args(search_weights, dataset, out, threshold, tmp_path, "--soft-starts", 3, "--mask-temperature", 0.5)
    )
    assert result.exit_code == 0, result.output
    recorded = json.loads((out / "run.json").read_text())["search"]
    assert recorded["soft"]["starts"] == 3
    assert (recorded["objective"]["temperature"], recorded["objective"]["mask_temperature"]) == (None, 0.5)
    document = json.loads((out / "aliases.json").read_text())
    entry = document["aliases"][0]
    for key in ("category_id", "name", "tokens", "text", "roundtrip", "train_score", "holdout_score", "evaluations"):
        assert key in entry
    blind = not entry["split"]["train_negatives"]  # then the run and its report say so
    assert ("cannot see false positives" in result.output) == blind
    assert ("Caution: no training image is without the concept" in (out / "report.md").read_text()) == blind
    assert len(entry["tokens"]) == 2 and 0 not in entry["tokens"]
    used = entry["lengths"][0]["surrogate_temperatures"]
    assert used["mask"] == 0.5 and 0 < used["score"] < 1  # given, and scaled to the model
    assert entry["evaluations"] <= 120 + 8  # at most one candidate past the budget
    # the alias file carries the threshold: evaluate re-scores at it unless told another
    scored = run_cli(
        "evaluate",
        "--weights",
        search_weights / "mlx",
        "--dataset",
        dataset,
        "--aliases",
        out / "aliases.json",
        "--split",
        "train",
        "--json",
        "--cache",
        tmp_path,
    )
    assert scored.exit_code == 0, scored.output
    row = json.loads(scored.output.strip().splitlines()[-1])
    assert row["tokens"] == entry["tokens"] and row["score"] == pytest.approx(entry["train_score"], abs=1e-6)


def test_batch_from_free_memory(search_weights, planted, tmp_path):
    """--batch 0: search records the measured batch and a resume keeps it; evaluate scores the
    same as with a given batch."""
    dataset, threshold = planted
    out = tmp_path / "run"
    first = run_cli(*search_args(search_weights, dataset, out, threshold, tmp_path, "--batch", 0, "--budget", 40))
    assert first.exit_code == 0 and "measured to fit" in first.output, first.output
    measured = json.loads((out / "run.json").read_text())["search"]["pairs_per_batch"]
    assert measured >= 1
    again = run_cli(
        *search_args(search_weights, dataset, out, threshold, tmp_path, "--batch", 0, "--budget", 40, "--resume")
    )
    assert again.exit_code == 0 and "measured to fit" not in again.output, again.output
    common = [
        "evaluate",
        "--weights",
        search_weights / "mlx",
        "--dataset",
        dataset,
        "--prompt",
        HIDDEN,
        "--split",
        "all",
        "--threshold",
        threshold,
        "--json",
        "--cache",
        tmp_path,
    ]
    scores = [
        [
            json.loads(line)["score"]
            for line in run_cli(*common, "--batch", b).output.splitlines()
            if line.startswith("{")
        ]
        for b in (0, 3)
    ]
    assert scores[0] and scores[0] == pytest.approx(scores[1], abs=1e-6)
    clean_failure(
        run_cli(*common, "--batch", 0, "--backend", "torch", "--checkpoint", search_weights / "sam3"),
        "is for the MLX backend",
    )


def test_interrupted_search_resumes_to_the_same_end(search_weights, planted, tmp_path, monkeypatch):
    from mlx_alias.search import driver

    dataset, threshold = planted
    lengths = ("--length", 1)  # with search_args' 2: two lengths, the kill lands in the second
    whole = run_cli(*search_args(search_weights, dataset, tmp_path / "whole", threshold, tmp_path, *lengths))
    assert whole.exit_code == 0, whole.output
    steps = {"n": 0}
    original = driver.save_state

    def killed_in_the_second_length(path, state):
        original(path, state)
        steps["n"] += path.name.endswith("-1.safetensors")
        if steps["n"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(driver, "save_state", killed_in_the_second_length)
    broken = run_cli(*search_args(search_weights, dataset, tmp_path / "cut", threshold, tmp_path, *lengths))
    clean_failure(broken, f"the run in {tmp_path / 'cut'} can be resumed: run the same command with --resume")
    assert not (tmp_path / "cut" / "aliases.json").exists()
    monkeypatch.setattr(driver, "save_state", original)
    resumed = run_cli(
        *search_args(search_weights, dataset, tmp_path / "cut", threshold, tmp_path, *lengths, "--resume")
    )
    assert resumed.exit_code == 0, resumed.output
    a = json.loads((tmp_path / "whole" / "aliases.json").read_text())
    b = json.loads((tmp_path / "cut" / "aliases.json").read_text())
    assert a == b
    entry = a["aliases"][0]
    assert [e["length"] for e in entry["lengths"]] == [2, 1]
    assert entry["train_score"] == max(e["train_score"] for e in entry["lengths"])
    assert entry["evaluations"] == sum(e["evaluations"] for e in entry["lengths"])
    assert "1-token best" in (tmp_path / "cut" / "report.md").read_text()


def test_search_bad_input(search_weights, planted, tmp_path):
    dataset, threshold = planted
    broken = tmp_path / "broken.json"
    broken.write_text("{ not json")
    clean_failure(run_cli(*search_args(search_weights, broken, tmp_path / "a", threshold, tmp_path)), "line 1")
    clean_failure(
        run_cli(*search_args(search_weights, dataset, tmp_path / "b", threshold, tmp_path, "--categories", "7")),
        "category 7",
    )
    clean_failure(
        run_cli(*search_args(search_weights, dataset, tmp_path / "c", threshold, tmp_path, "--resume")),
        "no run to resume",
    )
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_text("")
    clean_failure(
        run_cli(*search_args(search_weights, dataset, tmp_path / "d", threshold, tmp_path)), "already holds files"
    )
    clean_failure(
        run_cli(*search_args(search_weights, dataset, tmp_path / "e", threshold, tmp_path, "--phases", "soft,gsg")),
        "phases must be distinct names",
    )
    assert not (tmp_path / "e").exists()


def test_evaluate_bad_alias_files(search_weights, planted, tmp_path):
    dataset, threshold = planted
    cases = {
        "[1, 2": "not JSON",
        '[{"category_id": 9, "tokens": [5]}]': "category 9",
        '[{"category_id": 1, "tokens": [0, 5]}]': "vocabulary",
        '{"a": 1}': "not an mlx-alias alias file",
        '{"format": "mlx-alias.aliases/2", "aliases": [], "objective": {}}': "records no threshold",
    }
    for text, phrase in cases.items():
        path = tmp_path / "aliases.json"
        path.write_text(text)
        clean_failure(
            run_cli(
                "evaluate",
                "--weights",
                search_weights / "mlx",
                "--dataset",
                dataset,
                "--aliases",
                path,
                "--cache",
                tmp_path,
            ),
            phrase,
        )


def test_demo_finds_the_models_word_where_the_label_fails(tmp_path, monkeypatch):
    """The demo as the README runs it (its default seed and budget): the label 'purple', a word the
    shipped model never saw, finds nothing on unseen scenes; the alias (here the model's own word,
    'violet') segments them about as well as the model segments anything with its words (0.6-0.9
    for most of them on unseen scenes, docs/scenes.md); the two side by side on holdout and
    unseen scenes."""
    import mlx_alias.demo
    from mlx_alias.demo import BUDGET, IMAGES, LABEL, TEST_IMAGES

    summaries, demo = [], mlx_alias.demo.demo
    monkeypatch.setattr(mlx_alias.demo, "demo", lambda *a, **k: summaries.append(demo(*a, **k)) or summaries[-1])
    result = run_cli("demo", "--out", tmp_path / "demo")
    assert result.exit_code == 0, result.output
    assert f"label {LABEL!r}" in result.output and "alias '" in result.output
    summary = summaries[0]
    assert summary["label_unseen"] <= 0.0 and summary["alias_unseen"] >= 0.6, summary
    aliases = json.loads((tmp_path / "demo" / "run" / "aliases.json").read_text())["aliases"]
    # the last step may finish its candidate: at most one more candidate's images
    assert aliases[0]["evaluations"] <= BUDGET + IMAGES and aliases[0]["baseline"]["text"] == LABEL
    unseen = json.loads((tmp_path / "demo" / "unseen" / "annotations.json").read_text())
    assert len(unseen["images"]) == TEST_IMAGES
    assert "ground truth" in (tmp_path / "demo" / "run" / "report.md").read_text()


def test_demo_refuses_a_budget_its_sweep_would_spend(tmp_path):
    result = run_cli("demo", "--out", tmp_path / "demo", "--budget", 600)
    clean_failure(result, "the sweep of 49405 tokens costs up to")
    assert not (tmp_path / "demo").exists()
