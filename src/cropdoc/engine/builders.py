"""What a training run is built from: the cache and split, the network, the batches, the
optimizer, and the batch size that fits (``--bs auto``)."""

from __future__ import annotations

import dataclasses

import torch

from cropdoc.config import TrainConfig
from cropdoc.core.errors import UserError
from cropdoc.core.progress import say
from cropdoc.data.augment import Augment
from cropdoc.data.cache import Cache, open_cache
from cropdoc.data.loader import Batches, Split, run_split
from cropdoc.engine import distributed, memory
from cropdoc.model.archs import create_model, head_parameters
from cropdoc.model.build import build_network
from cropdoc.model.kinds import WholePhotoModel


def build_data(config: TrainConfig) -> tuple[Cache, Split]:
    """The cache (the first process on each machine prepares it; the others then find it
    done) and the train / valid split."""
    if distributed.local_rank() == 0:
        cache = open_cache(config.data, config.cache, config.cache_size, config.workers)
    distributed.barrier()
    if distributed.local_rank() != 0:
        cache = open_cache(config.data, config.cache, config.cache_size, config.workers)
    return cache, run_split(cache, config)


def build_model(
    config: TrainConfig, kind: WholePhotoModel, classes: int, outputs: int, device: torch.device
) -> torch.nn.Module:
    """The network (``cropdoc.model.build``) of the ``kind`` with ``outputs`` outputs for
    ``classes`` classes, on the device, as the config says."""
    pretrained = config.pretrained and not config.from_scratch and config.weights is None
    model = build_network(
        config.arch,
        classes,
        outputs,
        pooling=kind.pooling,
        pretrained=pretrained,
        weights=config.weights,
        img_size=config.parsed.size,
        drop_path=config.drop_path,
        global_pool=config.global_pool,
    )
    if config.grad_checkpointing:
        model.set_grad_checkpointing(True)
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    if config.sync_bn and distributed.active():
        if device.type != "cuda":
            raise UserError("--sync-bn needs GPUs: PyTorch's SyncBatchNorm runs on CUDA only")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def train_augment(config: TrainConfig, size: tuple[int, int]) -> Augment:
    """The training transform at ``size`` (resize only with ``--no-augment``)."""
    aug = Augment(
        size=size,
        item_size=config.parsed.item_size,
        resize=config.resize,
        min_scale=config.min_scale,
        rand=config.parsed.rand_augment,
    )
    if config.augment:
        return aug
    return dataclasses.replace(
        aug,
        rand=None,
        min_scale=1.0,
        flip=False,
        max_rotate=0,
        max_zoom=1,
        max_warp=0,
        max_lighting=0,
    )


def build_batches(
    config: TrainConfig,
    kind: WholePhotoModel,
    cache: Cache,
    split: Split,
    labels,
    aug: Augment,
    device,
    mean,
    std,
) -> tuple[Batches, Batches | None]:
    """Training and validation batches as the model's ``kind`` reads them
    (``training_batches``), each process taking its share. ``labels``: the targets of
    every cache entry (a multi-target run's values)."""
    common = dict(
        device=device,
        mean=mean,
        std=std,
        seed=config.seed,
        workers=config.workers,
        shard=(distributed.rank(), distributed.world_size()),
        balanced=config.balanced_sampling,  # training batches only
    )
    train, valid = kind.training_batches(cache, split, labels, config.bs, aug, **common)
    if len(train) == 0:
        raise UserError(
            f"{len(split.train)} training images make no batch of {config.bs} for each "
            f"of {distributed.world_size()} processes: lower --bs or use fewer processes"
        )
    return train, valid


BODY, HEAD = 0, 1  # a parameter group's "role": which of a phase's two learning rates it takes


def build_optimizer(model: torch.nn.Module, wd: float, device: torch.device):
    """AdamW over the body and the head (the body's learning rate is set lower), each split
    into weights that decay and those that do not (norms and biases: timm's practice, as
    shrinking a norm's scale or a bias toward 0 regularises nothing); returns the body's
    parameters, the head's and the optimizer."""
    head_ids = head_parameters(model)
    head = [p for p in model.parameters() if id(p) in head_ids]
    body = [p for p in model.parameters() if id(p) not in head_ids]
    groups = []
    for role, params in ((BODY, body), (HEAD, head)):
        groups.append({"params": [p for p in params if p.ndim > 1], "role": role})
        flat = [p for p in params if p.ndim <= 1]  # norms' scales and shifts, biases
        groups.append({"params": flat, "role": role, "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(
        groups,
        lr=1e-3,
        betas=(0.9, 0.99),
        eps=1e-5,
        weight_decay=wd,
        fused=device.type == "cuda",
    )
    return body, head, optimizer


def auto_batch_size(trainer, size: tuple[int, int]) -> int:
    """``--bs auto``: the largest power-of-two batch whose training step fits (a real step
    on a GPU, the measured step's memory against the machine's on a CPU)."""
    config, device, model = trainer.config, trainer.device, trainer.model
    bag = trainer.kind.bag  # a step's inputs: bs * bag

    def make_model() -> torch.nn.Module:
        body = create_model(
            config.arch, trainer.outputs, False, img_size=size, global_pool=config.global_pool
        )
        body.set_grad_checkpointing(config.grad_checkpointing)
        return body

    def fits(bs: int) -> None:
        if device.type == "cuda":  # a real step; BatchNorm statistics kept as they were
            buffers = [b.clone() for b in model.buffers()]
            x = torch.randn(bs * bag, 3, *size, device=device)
            x = x.contiguous(memory_format=torch.channels_last)
            try:
                with trainer.autocast():
                    logits = model(trainer.kind.step_input(x, bs))
                logits.float().sum().backward()
            finally:
                model.zero_grad(set_to_none=True)
                for buffer, saved in zip(model.buffers(), buffers, strict=True):
                    buffer.copy_(saved)
            return
        limit = memory.memory_limit()
        if limit is not None and memory.step_bytes(make_model, bs * bag, size) > limit:
            raise torch.OutOfMemoryError(f"a batch of {bs} needs more than {limit} bytes")

    start = memory.first_batch_size(len(trainer.split.train))
    bs, too_big = memory.find_batch_size(fits, start)
    bs = distributed.broadcast(bs)  # every process takes the first one's choice
    tried = f" ({', '.join(map(str, too_big))} did not fit)" if too_big else ""
    say(f"bs auto: {bs} at {size[0]}x{size[1]}{tried}")
    return bs


def provenance(config: TrainConfig, model: torch.nn.Module) -> dict[str, str]:
    """Where the run's weights started (``model.json``'s ``weights``): a local file's name
    and sha256, the hub's weights, or a random initialisation."""
    if config.weights is not None:
        from cropdoc.model.weights import provenance as file_provenance

        return file_provenance(config.weights, config.arch)
    if config.pretrained and not config.from_scratch:
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        return {"source": "hub", "name": str(cfg.get("hf_hub_id") or config.arch)}
    return {"source": "random"}
