"""Self-supervised pretraining of the demo's stand-in ResNet (PAC-Net's frame encoder).

A random tiny ResNet tells nothing and the demo's videos are too few to learn it inside PAC-Net, so
it first learns "what moves and where" without labels: the moving region (where a frame differs
from the video's median by more than `motion_threshold`) as a coarse mask from its last feature map
and its centroid and size from its pooled feature. The heads are discarded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pecn_ml.models.pacnet import frames_to_input
from pecn_ml.training.autoencoder import train_steps
from pecn_ml.utils.progress import LogFn


@dataclass(frozen=True)
class ResnetPretrainConfig:
    steps: int = 600
    batch_size: int = 64
    learning_rate: float = 2e-3      # AdamW, cosine-annealed to 0
    motion_threshold: int = 25       # levels (0..255) from the median that count as moving
    centroid_weight: float = 10.0    # loss = BCE(mask) + centroid_weight * MSE(centroid, size)
    seed: int = 0
    log_every_s: float = 10.0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or not 0 < self.motion_threshold < 255:
            raise ValueError("ResnetPretrainConfig: steps, batch_size >= 1 and 0 < threshold < 255")


def motion_masks(frames: np.ndarray, threshold: int) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T, H, W) float32 1 where a frame differs from the median frame."""
    median = np.median(frames, axis=0)                                            # (H, W, 3)
    return (np.abs(frames.astype(np.float32) - median).max(axis=-1) > threshold).astype(np.float32)


def region_stats(masks: torch.Tensor) -> torch.Tensor:
    """(B, H, W) masks -> (B, 3): centroid x, y in [0, 1] and sqrt(area fraction)."""
    b, h, w = masks.shape
    ys = torch.linspace(0, 1, h).view(1, h, 1)
    xs = torch.linspace(0, 1, w).view(1, 1, w)
    area = masks.sum((1, 2)).clamp(min=1.0)
    return torch.stack([(masks * xs).sum((1, 2)) / area, (masks * ys).sum((1, 2)) / area,
                        (area / (h * w)).sqrt()], dim=1)


def pretrain_resnet(resnet: Any, videos: Sequence[np.ndarray], config: ResnetPretrainConfig, *,
                    log: Optional[LogFn] = None) -> list[float]:
    """Train `resnet` (transformers `ResNetModel`) in place; returns the step losses."""
    if not videos:
        raise ValueError("pretrain_resnet: no videos")
    frames = np.concatenate(videos)                                                # (N, H, W, 3)
    masks = torch.from_numpy(np.concatenate([motion_masks(v, config.motion_threshold)
                                             for v in videos]))                   # (N, H, W)
    stats = region_stats(masks)                                                    # (N, 3)
    channels = resnet.config.hidden_sizes[-1]
    torch.manual_seed(config.seed)
    mask_head = torch.nn.Conv2d(channels, 1, 1)
    stats_head = torch.nn.Linear(channels, 3)
    g = torch.Generator().manual_seed(config.seed)

    def step_loss(_step: int) -> torch.Tensor:
        idx = torch.randint(0, len(frames), (config.batch_size,), generator=g)
        x = frames_to_input(torch.from_numpy(frames[idx.numpy()])[:, None])[:, 0]  # (B, 3, H, W)
        out = resnet(pixel_values=x)
        fmap = out.last_hidden_state                                               # (B, C, h, w)
        target_mask = F.adaptive_avg_pool2d(masks[idx][:, None], fmap.shape[-2:])  # (B, 1, h, w)
        return (F.binary_cross_entropy_with_logits(mask_head(fmap), target_mask)
                + config.centroid_weight * F.mse_loss(stats_head(out.pooler_output.flatten(1)), stats[idx]))

    resnet.train()
    losses = train_steps("resnet pretraining", [*resnet.parameters(), *mask_head.parameters(),
                                                *stats_head.parameters()], config, step_loss, log)
    resnet.eval()
    return losses
