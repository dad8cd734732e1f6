"""Training the reference SAM3 (tiny preset) from random init on the scene world, with SAM3's
own training forward and losses (``sam3.train``): one-to-one Hungarian matching
(``BinaryHungarianMatcherV2``, run by the model itself), the decoder's one-to-many queries
(DAC) with their own matcher (``BinaryOneToManyMatcher``), auxiliary losses on every decoder
layer, and sigmoid classification with IoU-aware positives and the presence loss
(``IABCEMdetr``), box L1 and GIoU (``Boxes``) and mask focal and dice (``Masks``), combined by
``Sam3LossWrapper``, plus the semantic head's per-pixel loss on the union of the caption's
instances (``SemanticSegCriterion``), with the weights of sam3's training configuration.

Each step draws ``batch`` fresh scenes and ``queries`` captions per scene
(``scenes.concepts.training_queries``), all from the seed and the step number, so a resumed
run sees exactly the data an uninterrupted one would. Only the model's top level is in
training mode (what turns on DAC, the auxiliary outputs and the matching); every layer stays
in eval mode, so no dropout: the world's data are unlimited. A checkpoint (model, optimizer, step; JSON and safetensors, no pickle) is written
every ``checkpoint_every`` steps and at the end; the learning curve (losses, seconds, and the
validation objective of the model's words and of random captions) goes to ``curve.jsonl``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from mlx_alias.config import ModelConfig, tiny_config
from mlx_alias.convert.sources import CheckpointError, weights_file
from mlx_alias.files import atomic_write_bytes
from mlx_alias.image import preprocess
from mlx_alias.scenes.concepts import random_pool, training_queries
from mlx_alias.scenes.world import SIZE, scene
from mlx_alias.search.objective import area_resize
from mlx_alias.search.run_folder import differences
from mlx_alias.search.state import load_state, save_state
from mlx_alias.tokenizer import Tokenizer, load_tokenizer

from . import runners
from .build import build_model
from .checkpoint import load_reference
from .compat import focal_loss_without_triton
from .validation import frame_caption, validate

# isort: split
from sam3.model.box_ops import box_cxcywh_to_xyxy  # noqa: E402
from sam3.train.loss.loss_fns import Boxes, IABCEMdetr, Masks, SemanticSegCriterion  # noqa: E402
from sam3.train.loss.sam3_loss import Sam3LossWrapper  # noqa: E402
from sam3.train.matcher import BinaryHungarianMatcherV2, BinaryOneToManyMatcher  # noqa: E402

focal_loss_without_triton()

log = logging.getLogger(__name__)
STATE = "train_state.safetensors"
CURVE = "curve.jsonl"


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 4500  # about two hours on 2 CPU cores (1.5 s a step)
    batch: int = 8  # scenes per step
    queries: int = 4  # captions per scene
    # 1e-3: 2e-3 fell back in its first 200 steps (semantic mIoU 0.011 against 0.096 at step 200)
    learning_rate: float = 1e-3
    warmup: int = 100  # steps of linear warm-up, then cosine decay to a tenth
    weight_decay: float = 0.01  # not on norms, biases or the token table
    clip: float = 0.1  # gradient norm, as DETR-style training clips
    seed: int = 0
    checkpoint_every: int = 100
    validate_every: int = 250
    validation_scenes: int = 24
    # a training folder whose last state (weights and Adam moments) this run starts from, or a
    # checkpoint folder (the weights alone, e.g. the shipped model), with its own schedule from
    # step 0: a warm restart that adds steps to a finished run (give it another seed, or it
    # replays the first run's data)
    init_from: str = ""
    # the shares of attribute captions that name the shape alone, and the pattern alone, beyond
    # the draw's own (see scenes.concepts.training_queries)
    shape_alone: float = 0.0
    pattern_alone: float = 0.0
    # the share of attribute captions that name two values of one attribute, covering either
    either: float = 0.0


def find_criterion() -> Sam3LossWrapper:
    """sam3's matchers and find losses with its training configuration's weights."""
    matcher = BinaryHungarianMatcherV2(focal=True, cost_class=2.0, cost_bbox=5.0, cost_giou=2.0, alpha=0.25, gamma=2)
    losses = [
        Boxes(weight_dict={"loss_bbox": 5.0, "loss_giou": 2.0}),
        IABCEMdetr(
            pos_weight=10.0,
            weight_dict={"loss_ce": 20.0, "presence_loss": 20.0},
            weak_loss=False,
            alpha=0.25,
            gamma=2,
            use_presence=True,
        ),
        Masks(weight_dict={"loss_mask": 200.0, "loss_dice": 10.0}, focal_alpha=0.25, focal_gamma=2),
    ]
    # "local": normalised by this process's boxes ("global" all-reduces across processes)
    return Sam3LossWrapper(
        losses,
        normalization="local",
        matcher=matcher,
        o2m_matcher=BinaryOneToManyMatcher(),
        o2m_weight=2.0,
        use_o2m_matcher_on_o2m_aux=False,
        loss_fn_semantic_seg=SemanticSegCriterion({"loss_semantic_seg": 20.0, "loss_semantic_dice": 10.0}),
    )


def _boxes(masks: np.ndarray) -> np.ndarray:
    """[n, H, W] -> [n, 4] normalised cx, cy, w, h of each mask's bounding box."""
    out = np.zeros((len(masks), 4), np.float32)
    for i, mask in enumerate(masks):
        ys, xs = np.nonzero(mask)
        x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
        out[i] = (
            (x0 + x1) / 2 / mask.shape[1],
            (y0 + y1) / 2 / mask.shape[0],
            (x1 - x0) / mask.shape[1],
            (y1 - y0) / mask.shape[0],
        )
    return out


def batch_at(step: int, cfg: TrainConfig, tokenizer: Tokenizer, pool: np.ndarray, mask_size: int) -> dict:
    """The scenes and captions of a step, with sam3's packed targets for each (scene, caption)."""
    rng = np.random.default_rng([cfg.seed, step])
    scenes = [scene(rng) for _ in range(cfg.batch)]
    ids, image_index, boxes, masks, counts = [], [], [], [], []
    for i, sc in enumerate(scenes):
        for query in training_queries(
            rng,
            sc.things,
            cfg.queries,
            tokenizer,
            pool,
            shape_alone=cfg.shape_alone,
            pattern_alone=cfg.pattern_alone,
            either=cfg.either,
        ):
            chosen = sc.masks[query.covers]
            ids.append(frame_caption(tokenizer, query.ids))
            image_index.append(i)
            boxes.append(_boxes(chosen))
            masks.append(
                area_resize(chosen, mask_size, mask_size) if len(chosen) else np.zeros((0, mask_size, mask_size), bool)
            )
            counts.append(len(chosen))
    pixels = np.stack([preprocess(sc.image, SIZE) for sc in scenes]).transpose(0, 3, 1, 2)
    most = max(max(counts), 1)
    padded = np.zeros((len(counts), most, 4), np.float32)
    object_ids = np.full((len(counts), most), -1, np.int64)
    for p, b in enumerate(boxes):
        padded[p, : len(b)] = b
        object_ids[p, : len(b)] = np.arange(len(b))
    packed = torch.from_numpy(np.concatenate(boxes)) if sum(counts) else torch.zeros(0, 4)
    # sam3's BatchedFindTarget fields, which the model's matching reads (``Sam3Image.back_convert``)
    find_target = SimpleNamespace(
        boxes=packed,
        boxes_padded=torch.from_numpy(padded),
        num_boxes=torch.tensor(counts),
        segments=torch.from_numpy(np.concatenate(masks).astype(np.float32)),
        semantic_segments=None,
        is_valid_segment=torch.ones(sum(counts), dtype=torch.bool),
        is_exhaustive=torch.ones(len(counts), dtype=torch.bool),
        object_ids=torch.from_numpy(object_ids[object_ids >= 0]),
        object_ids_padded=torch.from_numpy(object_ids),
    )
    targets = {
        "boxes": packed,
        "boxes_xyxy": box_cxcywh_to_xyxy(packed),
        "boxes_padded": find_target.boxes_padded,
        "num_boxes": find_target.num_boxes,
        "object_ids_padded": find_target.object_ids_padded,
        "is_exhaustive": find_target.is_exhaustive,
        "masks": find_target.segments,
        "is_valid_mask": find_target.is_valid_segment,
    }
    return {
        "pixels": torch.from_numpy(np.ascontiguousarray(pixels)),
        "ids": torch.from_numpy(np.stack(ids)),
        "image_index": torch.tensor(image_index),
        "targets": targets,
        "find_target": find_target,
    }


def find_loss(model: torch.nn.Module, batch: dict, criterion: Sam3LossWrapper) -> tuple[torch.Tensor, dict[str, float]]:
    """sam3's training loss of a batch; the model's top level is put in training mode for it."""
    model.training, model.matcher = True, criterion.matcher  # DAC, auxiliary outputs, matching
    try:
        features = runners.image_features(model, batch["pixels"])
        text = runners.text_features_from_ids(model, batch["ids"])
        out = runners.grounding_outputs(model, features, text, batch["image_index"], batch["find_target"])
    finally:
        model.training = False
    losses = criterion.compute_loss(out, batch["targets"])
    # the semantic head's loss (the caption's union mask per pixel), as Sam3LossWrapper.forward adds it
    semantic = criterion.loss_fn_semantic_seg(out, batch["targets"])
    total = losses.pop("core_loss") + semantic.pop("core_loss")
    losses.update(semantic)
    return total, {
        k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in losses.items() if "aux" not in k
    }


def _groups(model: torch.nn.Module, cfg: TrainConfig) -> list[dict]:
    decay, plain = [], []
    for name, param in model.named_parameters():
        (plain if param.ndim < 2 or "token_embedding" in name else decay).append(param)
    return [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": plain, "weight_decay": 0.0}]


def learning_rate(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.learning_rate * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(cfg.steps - cfg.warmup, 1)
    return cfg.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def _save(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int, cfg: TrainConfig) -> None:
    optim = optimizer.state_dict()
    state = {
        "step": step,
        "config": asdict(cfg),
        "model": {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()},
        "optimizer": {
            "param_groups": [{k: v for k, v in g.items()} for g in optim["param_groups"]],
            "state": {str(i): {k: v.cpu().numpy() for k, v in s.items()} for i, s in optim["state"].items()},
        },
    }
    save_state(path, state)


def _restore(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> int:
    state = load_state(path)
    # a setting the saved run predates had its default then (the code did what the default does)
    saved = {**asdict(TrainConfig()), **state["config"]}
    changed = differences(saved, json.loads(json.dumps(asdict(cfg))))
    if changed:
        raise ValueError(
            f"{path.parent} holds a training run with other settings ({'; '.join(changed)}); "
            "resume it with the same ones or train into another folder"
        )
    return _load(state, model, optimizer)


def init_source(source: Path) -> Path:
    """The file a warm start reads: a training folder's last state, or a checkpoint folder's weights."""
    if (source / STATE).is_file():
        return source / STATE
    try:
        return weights_file(source)
    except CheckpointError:
        raise ValueError(f"{source} holds no training state ({STATE}) nor a checkpoint to start from") from None


def _warm_start(source: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, model_cfg: ModelConfig) -> None:
    """Start from another run's last state, or from a checkpoint's weights with fresh Adam
    moments; this run's schedule then starts from its step 0."""
    path = init_source(source)
    if path.name == STATE:
        log.info("starting from %s at its step %d", source, _load(load_state(path), model, optimizer))
        return
    trained, cfg = load_reference(source, "cpu")
    if cfg != model_cfg:
        raise ValueError(f"the checkpoint in {source} is not of this run's model preset")
    model.load_state_dict(trained.state_dict())  # a half-precision checkpoint widens to float32 here
    log.info("starting from the weights of %s", path)


def load_weights(state: dict, model: torch.nn.Module) -> None:
    """A saved training state's weights into ``model``."""
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state["model"].items()})


def _load(state: dict, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    load_weights(state, model)
    optim = state["optimizer"]
    optimizer.load_state_dict(
        {
            "param_groups": optim["param_groups"],
            "state": {
                int(i): {k: torch.from_numpy(np.array(v)) for k, v in s.items()} for i, s in optim["state"].items()
            },
        }
    )
    return int(state["step"])


def _cut_curve(path: Path, step: int) -> None:
    """Drop the curve's records after ``step`` (those a killed run wrote past its last
    checkpoint), which the resumed run writes again."""
    if not path.is_file():
        return
    lines = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= step]
    atomic_write_bytes(path, "".join(line + "\n" for line in lines).encode())


def train(
    out: Path,
    cfg: TrainConfig = TrainConfig(),
    model_cfg: ModelConfig | None = None,
    time_limit: float | None = None,
    until: int | None = None,
) -> tuple[torch.nn.Module, int]:
    """Train into ``out`` (created; resumed from its checkpoint if it holds one) until step
    ``until`` (default ``cfg.steps``) or for ``time_limit`` seconds, whichever comes first;
    returns the model and the steps done. The schedule is always ``cfg``'s."""
    torch.manual_seed(cfg.seed)
    model_cfg = model_cfg or tiny_config()
    out.mkdir(parents=True, exist_ok=True)
    model = build_model(model_cfg, seed=cfg.seed, device="cpu")
    optimizer = torch.optim.AdamW(_groups(model, cfg), lr=cfg.learning_rate, betas=(0.9, 0.999))
    step = _restore(out / STATE, model, optimizer, cfg) if (out / STATE).is_file() else 0
    if step:
        log.info("resumed at step %d", step)
    elif cfg.init_from:
        _warm_start(Path(cfg.init_from), model, optimizer, model_cfg)
    _cut_curve(out / CURVE, step)
    tokenizer, criterion = load_tokenizer(), find_criterion()
    pool = random_pool(tokenizer)
    mask_size = model_cfg.vision.grid * 4
    started = time.time()
    with open(out / CURVE, "a") as curve:
        while step < min(cfg.steps if until is None else until, cfg.steps) and (
            time_limit is None or time.time() - started < time_limit
        ):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, cfg)
            batch = batch_at(step, cfg, tokenizer, pool, mask_size)
            tick = time.time()
            loss, parts = find_loss(model, batch, criterion)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            optimizer.step()
            step += 1
            record = {"step": step, "loss": loss.item(), "seconds": time.time() - tick, **parts}
            if step % cfg.validate_every == 0 or step == cfg.steps:
                record.update(validate(model, cfg.seed, cfg.validation_scenes, tokenizer, pool, mask_size))
                log.info(
                    "step %d: loss %.3f, words median %.3f, random max %.3f, either median %.3f",
                    step,
                    loss.item(),
                    record["words_median"],
                    record["random_max"],
                    record["either_median"],
                )
            curve.write(json.dumps(record) + "\n")
            curve.flush()
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                _save(out / STATE, model, optimizer, step, cfg)
    _save(out / STATE, model, optimizer, step, cfg)
    return model, step
