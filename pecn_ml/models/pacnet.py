"""PAC-Net: progress estimation from video frames and the action text.

ResNet per frame -> Transformer over time; CLIP text encoder on the action; frames attend to words,
the sentence pools frames -> MLP -> regression (progress in [0, 1]) or classification (0..100 %).
A checkpoint folder (`save_pacnet`) rebuilds the model without the pretrained weights.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pecn_ml.utils.codec import decode
from pecn_ml.utils.files import atomic_dir, write_json_atomic

CHECKPOINT_FORMAT = "pecn.pacnet.v1"
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
RESNET_DIR, CLIP_DIR, TOKENIZER_DIR = "resnet", "clip_text", "tokenizer"
HEADS = ("regression", "classification")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PacNetConfig:
    """The whole PAC-Net architecture; stored beside the weights in every checkpoint."""

    resnet_name: str = "microsoft/resnet-50"          # hub name or local folder
    clip_name: str = "openai/clip-vit-base-patch32"   # hub name or local folder (model + tokenizer)
    hidden_dim: int = 512
    num_frames: int = 20          # frames per clip (also the number of learned positions)
    temporal_layers: int = 2
    heads: int = 8                # attention heads (temporal encoder and fusion)
    dropout: float = 0.1
    num_classes: int = 101        # classification head: 0, 1, ..., 100 %
    head: str = "regression"      # "regression" | "classification"
    image_size: Optional[int] = None  # resize frames to this square size; None = cache resolution
    frame_diff: bool = False      # also encode each frame's change since the first frame
    pool_grid: int = 1            # ResNet features average-pooled to a g x g grid (1 = global)
    max_text_len: int = 77

    def __post_init__(self):
        checks = [
            (self.head in HEADS, f"head must be one of {HEADS}, got {self.head!r}"),
            (self.hidden_dim > 0 and self.heads > 0 and self.hidden_dim % self.heads == 0,
             f"hidden_dim ({self.hidden_dim}) must be a positive multiple of heads ({self.heads})"),
            (self.num_frames >= 1 and self.temporal_layers >= 0, "num_frames must be >= 1 and temporal_layers >= 0"),
            (self.num_classes >= 2, f"num_classes must be >= 2, got {self.num_classes}"),
            (0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}"),
            (self.pool_grid >= 1, f"pool_grid must be >= 1, got {self.pool_grid}"),
            (self.image_size is None or self.image_size >= 8, f"image_size must be >= 8 or None, got {self.image_size}")]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"PacNetConfig: {message}")

    @classmethod
    def tiny(cls, resnet_path: str | os.PathLike, clip_path: str | os.PathLike,
             head: str = "regression", **overrides) -> "PacNetConfig":
        """Small preset over the tiny local models (tests, demo): frame differences, 48 px frames,
        a 2 x 2 feature grid, no dropout (each measured better on the demo's data)."""
        return cls(**{**dict(resnet_name=str(resnet_path), clip_name=str(clip_path), hidden_dim=64,
                             num_frames=8, temporal_layers=1, heads=4, dropout=0.0, head=head,
                             frame_diff=True, image_size=48, pool_grid=2), **overrides})

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> "PacNetConfig":
        """The config `to_dict` wrote; ValueError naming `source` and the field that does not fit."""
        return decode(cls, data, source)


def frames_to_input(frames: torch.Tensor, image_size: Optional[int] = None) -> torch.Tensor:
    """uint8 frames (B, T, H, W, 3) -> ImageNet-normalised float (B, T, 3, S, S) on their device;
    `image_size` resizes (bilinear, antialiased), None keeps H x W."""
    assert frames.dtype == torch.uint8, f"frames must be uint8, got {frames.dtype}"
    assert frames.ndim == 5 and frames.shape[-1] == 3, f"frames must be (B,T,H,W,3), got {tuple(frames.shape)}"
    B, T, H, W, _ = frames.shape
    x = frames.permute(0, 1, 4, 2, 3).reshape(B * T, 3, H, W).float().div_(255.0)  # (B*T, 3, H, W)
    if image_size is not None and (H, W) != (image_size, image_size):
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear",
                          align_corners=False, antialias=True)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    x = (x - mean) / std
    return x.view(B, T, 3, x.shape[-2], x.shape[-1])  # (B, T, 3, S, S)


def uniform_indices(last: int, num: int) -> np.ndarray:
    """`num` indices spread uniformly over 0..last inclusive (repeats when last+1 < num)."""
    assert last >= 0 and num >= 1, (last, num)
    return np.rint(np.linspace(0, last, num)).astype(np.int64)


class FrameEncoder(nn.Module):
    """ResNet per frame, pooled (globally, or to a g x g grid that keeps where things are), projected:
    (B, T, 3, H, W) -> (B, T, D). `diff`: also each frame's change since frame 0 (TSN's RGB
    difference), projected separately and added; one backbone call, so BatchNorm sees both."""

    def __init__(self, resnet: nn.Module, hidden_dim: int, diff: bool = False, pool_grid: int = 1):
        super().__init__()
        self.backbone = resnet
        self.pool_grid = pool_grid
        feat = resnet.config.hidden_sizes[-1] * pool_grid * pool_grid
        self.proj = nn.Linear(feat, hidden_dim)
        self.diff_proj = nn.Linear(feat, hidden_dim) if diff else None

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        B, T = frames.shape[:2]
        x = frames.flatten(0, 1)                                       # (B*T, 3, H, W)
        if self.diff_proj is not None:
            x = torch.cat([x, (frames - frames[:, :1]).flatten(0, 1)])  # (2*B*T, 3, H, W)
        # the ResNet's pooler_output is this pooling to 1 x 1
        grid = F.adaptive_avg_pool2d(self.backbone(pixel_values=x).last_hidden_state, self.pool_grid)
        pooled = grid.flatten(1)                                       # (N, C*g*g)
        feats = self.proj(pooled[:B * T])                               # (B*T, D)
        if self.diff_proj is not None:
            feats = feats + self.diff_proj(pooled[B * T:])
        return feats.view(B, T, -1)                                    # (B, T, D)


class TemporalEncoder(nn.Module):
    """Transformer encoder over frame features with learned positions: (B, T, D) -> (B, T, D)."""

    def __init__(self, hidden_dim: int, max_frames: int, layers: int, heads: int, dropout: float):
        super().__init__()
        self.pos = nn.Parameter(torch.randn(1, max_frames, hidden_dim) * 0.02)
        layer = nn.TransformerEncoderLayer(hidden_dim, heads, dim_feedforward=4 * hidden_dim,
                                           dropout=dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False) if layers else None
        self.norm = nn.LayerNorm(hidden_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[1]
        assert T <= self.pos.shape[1], f"{T} frames > {self.pos.shape[1]} learned positions"
        x = x + self.pos[:, :T]  # (B, T, D)
        if self.encoder is not None:
            x = self.encoder(x)
        return self.norm(x)


class TextEncoder(nn.Module):
    """CLIP text model, projected: ids (B, L) -> tokens (B, L, D) and pooled (B, D)."""

    def __init__(self, clip_text: nn.Module, hidden_dim: int):
        super().__init__()
        self.backbone = clip_text
        self.proj = nn.Linear(clip_text.config.hidden_size, hidden_dim)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask)
        tokens = self.proj(out.last_hidden_state)  # (B, L, D)
        pooled = self.proj(out.pooler_output)      # (B, D) (end-of-text token)
        return tokens, pooled


class CrossModalFusion(nn.Module):
    """Frames attend to words (padding masked); the sentence then pools frames; MLP.

    video (B, T, D), words (B, L, D), sentence (B, D), pad_mask (B, L) True = padding -> (B, D)
    """

    def __init__(self, hidden_dim: int, heads: int, dropout: float):
        super().__init__()
        self.v2t = nn.MultiheadAttention(hidden_dim, heads, dropout=dropout, batch_first=True)
        self.norm_v = nn.LayerNorm(hidden_dim)
        self.t2v = nn.MultiheadAttention(hidden_dim, heads, dropout=dropout, batch_first=True)
        self.norm_q = nn.LayerNorm(hidden_dim)
        self.mlp = nn.Sequential(
            nn.Linear(3 * hidden_dim, hidden_dim), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(hidden_dim, hidden_dim), nn.GELU(), nn.Dropout(dropout),
        )

    def forward(self, video, words, sentence, pad_mask):
        attended, _ = self.v2t(video, words, words, key_padding_mask=pad_mask, need_weights=False)
        video = self.norm_v(video + attended)                         # (B, T, D)
        query = self.norm_q(sentence).unsqueeze(1)                    # (B, 1, D)
        pooled, _ = self.t2v(query, video, video, need_weights=False)
        pooled = pooled.squeeze(1)                                    # (B, D)
        fused = torch.cat([pooled, video.mean(dim=1), sentence], dim=-1)  # (B, 3D)
        return self.mlp(fused)                                        # (B, D)


class PacNet(nn.Module):
    """Progress-Aware Cross-modal Network (backbones from the config's names unless given)."""

    def __init__(self, config: PacNetConfig, *, resnet: Optional[nn.Module] = None,
                 clip_text: Optional[nn.Module] = None, tokenizer=None):
        super().__init__()
        if resnet is None or clip_text is None or tokenizer is None:   # the pretrained ones (hub or folder)
            from transformers import CLIPTextModel, CLIPTokenizer, ResNetModel

            resnet = ResNetModel.from_pretrained(config.resnet_name, dtype=torch.float32)
            clip_text = CLIPTextModel.from_pretrained(config.clip_name, dtype=torch.float32)
            tokenizer = CLIPTokenizer.from_pretrained(config.clip_name)
        self.config = config
        self.tokenizer = tokenizer
        D = config.hidden_dim
        self.frame_encoder = FrameEncoder(resnet, D, config.frame_diff, config.pool_grid)
        self.temporal = TemporalEncoder(D, config.num_frames, config.temporal_layers,
                                        config.heads, config.dropout)
        self.text_encoder = TextEncoder(clip_text, D)
        self.fusion = CrossModalFusion(D, config.heads, config.dropout)
        out = 1 if config.head == "regression" else config.num_classes
        self.head = nn.Linear(D, out)
        self.register_buffer("class_values", torch.linspace(0.0, 1.0, config.num_classes),
                             persistent=False)

    def backbone_parameters(self) -> list[nn.Parameter]:
        """ResNet + CLIP text parameters (the pretrained part, trained at a lower lr)."""
        return [*self.frame_encoder.backbone.parameters(), *self.text_encoder.backbone.parameters()]

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Texts -> (input_ids (B, L), attention_mask (B, L)), padded to the longest."""
        assert len(texts) > 0 and all(isinstance(t, str) for t in texts), "texts must be strings"
        enc = self.tokenizer(list(texts), padding="longest", truncation=True,
                             max_length=self.config.max_text_len, return_tensors="pt")
        return enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)

    def prepare_frames(self, frames_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 (B, T, H, W, 3) -> normalised float (B, T, 3, S, S) on the model's device."""
        return frames_to_input(frames_uint8.to(self.device), self.config.image_size)

    def forward(self, frames: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> torch.Tensor:
        """frames (B, T, 3, H, W) normalised float, ids/mask (B, L) ->
        (B,) progress in [0, 1] (regression) or (B, num_classes) logits (classification)."""
        assert frames.ndim == 5 and frames.shape[2] == 3, f"frames must be (B,T,3,H,W), got {tuple(frames.shape)}"
        assert frames.is_floating_point(), "frames must be float (use prepare_frames on uint8)"
        B, T = frames.shape[:2]
        assert T <= self.config.num_frames, f"{T} frames > config.num_frames={self.config.num_frames}"
        assert input_ids.shape == attention_mask.shape and input_ids.shape[0] == B, \
            f"ids {tuple(input_ids.shape)} / mask {tuple(attention_mask.shape)} vs batch {B}"
        video = self.temporal(self.frame_encoder(frames))                    # (B, T, D)
        words, sentence = self.text_encoder(input_ids, attention_mask)       # (B, L, D), (B, D)
        fused = self.fusion(video, words, sentence, attention_mask == 0)     # (B, D)
        out = self.head(fused)
        if self.config.head == "regression":
            return torch.sigmoid(out.squeeze(-1))                            # (B,)
        return out                                                           # (B, C)

    def progress_from_output(self, output: torch.Tensor) -> torch.Tensor:
        """Forward output -> (B,) progress in [0, 1]; classification: the expected value (lower MAE than argmax)."""
        if self.config.head == "regression":
            return output.float()
        probs = output.float().softmax(dim=-1)                   # (B, C)
        return probs @ self.class_values.to(probs.device)        # (B,)

    def predict_progress(self, frames: torch.Tensor, input_ids: torch.Tensor,
                         attention_mask: torch.Tensor) -> torch.Tensor:
        """(B,) progress in [0, 1] for either head (see `progress_from_output`)."""
        return self.progress_from_output(self.forward(frames, input_ids, attention_mask))


def write_pacnet_files(model: PacNet, folder: str | os.PathLike) -> Path:
    """Write the model files into an existing folder (no atomicity; see `save_pacnet`)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    model = getattr(model, "module", model)  # unwrap DDP-style wrappers
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
    model.frame_encoder.backbone.config.save_pretrained(folder / RESNET_DIR)
    model.text_encoder.backbone.config.save_pretrained(folder / CLIP_DIR)
    model.tokenizer.save_pretrained(folder / TOKENIZER_DIR)
    write_json_atomic(folder / CONFIG_NAME, {"format": CHECKPOINT_FORMAT,
                                             "config": model.config.to_dict()})
    return folder


def save_pacnet(model: PacNet, out_dir: str | os.PathLike) -> Path:
    """Write a self-contained checkpoint folder atomically (temp folder + rename); returns it."""
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        write_pacnet_files(model, tmp)
    return out_dir


def read_pacnet_config(path: str | os.PathLike) -> PacNetConfig:
    """The PacNetConfig stored in a checkpoint folder, with clear errors on bad files."""
    cfg_file = Path(path) / CONFIG_NAME
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{cfg_file}: missing; {path} is not a PAC-Net checkpoint folder")
    try:
        data = json.loads(cfg_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_file}: invalid JSON ({e})") from e
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{cfg_file}: not a {CHECKPOINT_FORMAT} checkpoint config")
    return PacNetConfig.from_dict(data.get("config", {}), source=str(cfg_file))


def load_pacnet(path: str | os.PathLike, device: str | torch.device = "cpu") -> PacNet:
    """Rebuild a PacNet from its checkpoint folder alone (no pretrained weights needed)."""
    from safetensors.torch import load_file
    from transformers import (CLIPTextConfig, CLIPTextModel, CLIPTokenizer, ResNetConfig,
                              ResNetModel)

    path = Path(path)
    config = read_pacnet_config(path)
    for sub in (RESNET_DIR, CLIP_DIR, TOKENIZER_DIR, WEIGHTS_NAME):
        if not (path / sub).exists():
            raise FileNotFoundError(f"{path / sub}: missing from PAC-Net checkpoint {path}")
    resnet = ResNetModel(ResNetConfig.from_pretrained(path / RESNET_DIR))
    clip_text = CLIPTextModel(CLIPTextConfig.from_pretrained(path / CLIP_DIR))
    tokenizer = CLIPTokenizer.from_pretrained(path / TOKENIZER_DIR)
    model = PacNet(config, resnet=resnet, clip_text=clip_text, tokenizer=tokenizer)
    state = load_file(str(path / WEIGHTS_NAME))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path / WEIGHTS_NAME}: weights do not match the config "
                         f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    return model.to(device).eval()

