"""Every stage's step written the way the paper's PyTorch code runs it: the baseline that
`benchmarks/throughput.py` times side by side with our JAX steps.

PyTorch eager, channels-last on CPU, bf16 autocast on CUDA with float32 master weights. The
models, fusion head, losses, optimizers and on-device augmentation mirror mlfd_jax's (module and
parameter names included, so a test can load our weights into these modules and compare outputs),
so a throughput ratio compares implementations, not models. Where a mirror is not exact:

- fusion `_Down`: its 3x3 stride-2 conv pads 1 on each side (PyTorch style); ours uses XLA's
  'SAME', which pads (0, 1) on even sizes. Same shapes and FLOPs, maps shifted by a pixel.
- `_resize`: F.interpolate bilinear without antialias; ours antialiases when shrinking. Both
  are no-ops here: the teachers share the reference student's architecture, so grids match.
- BatchNorm's running variance: PyTorch updates it with the unbiased batch variance, Flax
  with the biased one (normalisation uses the biased one in both).
- Inits follow torchvision/timm; ours differ in a few layers (fusion convs). No effect on timing.
- Frozen teachers run only up to the fusion level, as XLA's dead-code elimination makes ours do.
- Our step also computes top-1 and the gradient norm for its logs; this one does not.

  python -m benchmarks.torch_reference --model resnet18 --width 0.125 --batch 16 --steps 3
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from typing import Callable, Sequence

from mlfd_jax.data.augment import MEAN, STD
from mlfd_jax.models import feature_space
from mlfd_jax.models.layers import MAP_LEVELS, SMALL_IMAGE, scaled

try:
  import torch
  import torch.nn.functional as F
  from torch import nn
except ImportError:  # CI has no torch: the module still imports and `available()` says so.
  torch = F = nn = None

_Module = nn.Module if nn is not None else object

STAGES = ("teacher", "joint", "student_mlfd", "student_kd", "eval")
# The settings of configs/tiny_imagenet_subsets.py (config_lib.train_block / distill_block).
SGD = dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
ADAMW = dict(lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05)
LABEL_SMOOTHING = 0.1  # teachers and joint teacher; students train without it
W_KD, W_FEAT, W_CE, TEMPERATURE = 0.6, 0.2, 0.2, 2.0
JOINT_DROPOUT = 0.2
PAD = 4


def available() -> bool:
  """Whether torch imports here (CI installs only the JAX side)."""
  return torch is not None


# Backbones -------------------------------------------------------------------------------------
def _conv(cin, cout, k, stride):
  return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False)


class _Shortcut(_Module):
  def __init__(self, cin, cout, stride):
    super().__init__()
    self.conv = _conv(cin, cout, 1, stride)
    self.bn = nn.BatchNorm2d(cout)

  def forward(self, x):
    return self.bn(self.conv(x))


class _BasicBlock(_Module):
  expansion = 1

  def __init__(self, cin, planes, stride):
    super().__init__()
    self.conv1 = _conv(cin, planes, 3, stride)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = _conv(planes, planes, 3, 1)
    self.bn2 = nn.BatchNorm2d(planes)
    self.shortcut = _Shortcut(cin, planes, stride) if stride != 1 or cin != planes else None

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)), inplace=True)
    y = self.bn2(self.conv2(y))
    y += x if self.shortcut is None else self.shortcut(x)
    return F.relu(y, inplace=True)


class _Bottleneck(_Module):
  expansion = 4

  def __init__(self, cin, planes, stride):
    super().__init__()
    cout = planes * self.expansion
    self.conv1 = _conv(cin, planes, 1, 1)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = _conv(planes, planes, 3, stride)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = _conv(planes, cout, 1, 1)
    self.bn3 = nn.BatchNorm2d(cout)
    self.shortcut = _Shortcut(cin, cout, stride) if stride != 1 or cin != cout else None

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)), inplace=True)
    y = F.relu(self.bn2(self.conv2(y)), inplace=True)
    y = self.bn3(self.conv3(y))
    y += x if self.shortcut is None else self.shortcut(x)
    return F.relu(y, inplace=True)


class ResNet(_Module):
  """models/resnet.py: torchvision v1.5 blocks; 3x3/1 stem without max-pool up to 64 px."""

  def __init__(self, block, stage_sizes, *, num_classes, image_size, width):
    super().__init__()
    self.small_stem = image_size <= SMALL_IMAGE
    stem = scaled(64, width)
    self.stem_conv = _conv(3, stem, 3 if self.small_stem else 7, 1 if self.small_stem else 2)
    self.stem_bn = nn.BatchNorm2d(stem)
    cin, stages = stem, []
    for i, (n, base) in enumerate(zip(stage_sizes, (64, 128, 256, 512))):
      planes, blocks = scaled(base, width), []
      for j in range(n):
        blocks.append(block(cin, planes, 2 if i > 0 and j == 0 else 1))
        cin = planes * block.expansion
      stages.append(nn.ModuleList(blocks))
    self.stages = nn.ModuleList(stages)
    self.head = nn.Linear(cin, num_classes)
    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

  def forward(self, x, until: str | None = None):
    """(float32 logits, levels); stops after level `until` (logits None) when given."""
    x = F.relu(self.stem_bn(self.stem_conv(x)), inplace=True)
    if not self.small_stem:
      x = F.max_pool2d(x, 3, 2, 1)
    feats = {}
    for i, stage in enumerate(self.stages):
      for blk in stage:
        x = blk(x)
      feats[f"stage{i + 1}"] = x
      if until == f"stage{i + 1}":
        return None, feats
    feats["pooled"] = x.mean((2, 3))
    return self.head(feats["pooled"]).float(), feats


def _layer_norm_2d(norm, x):
  """LayerNorm over the channels of an NCHW map (timm's LayerNorm2d)."""
  return norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class _ConvNeXtBlock(_Module):
  def __init__(self, dim):
    super().__init__()
    self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
    self.norm = nn.LayerNorm(dim, eps=1e-6)
    self.fc1 = nn.Linear(dim, 4 * dim)
    self.fc2 = nn.Linear(4 * dim, dim)
    self.gamma = nn.Parameter(torch.full((dim,), 1e-6))

  def forward(self, x):
    y = self.dwconv(x).permute(0, 2, 3, 1)
    y = self.fc2(F.gelu(self.fc1(self.norm(y)))) * self.gamma
    return x + y.permute(0, 3, 1, 2)


class _Downsample(_Module):
  def __init__(self, cin, cout):
    super().__init__()
    self.norm = nn.LayerNorm(cin, eps=1e-6)
    self.conv = nn.Conv2d(cin, cout, 2, stride=2)

  def forward(self, x):
    return self.conv(_layer_norm_2d(self.norm, x))


class ConvNeXt(_Module):
  """models/convnext.py (drop_path 0): 2x2 patchify stem up to 64 px, else 4x4."""

  def __init__(self, depths, dims, *, num_classes, image_size):
    super().__init__()
    patch = 2 if image_size <= SMALL_IMAGE else 4
    self.stem_conv = nn.Conv2d(3, dims[0], patch, stride=patch)
    self.stem_norm = nn.LayerNorm(dims[0], eps=1e-6)
    self.downsample = nn.ModuleList([_Downsample(dims[i - 1], dims[i]) for i in range(1, 4)])
    self.stages = nn.ModuleList([nn.ModuleList([_ConvNeXtBlock(dim) for _ in range(depth)])
                                 for depth, dim in zip(depths, dims)])
    self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
    self.head = nn.Linear(dims[-1], num_classes)
    for m in self.modules():
      if isinstance(m, (nn.Conv2d, nn.Linear)):
        nn.init.normal_(m.weight, std=0.02)
        nn.init.zeros_(m.bias)

  def forward(self, x, until: str | None = None):
    x = _layer_norm_2d(self.stem_norm, self.stem_conv(x))
    feats = {}
    for i, stage in enumerate(self.stages):
      if i > 0:
        x = self.downsample[i - 1](x)
      for blk in stage:
        x = blk(x)
      feats[f"stage{i + 1}"] = x
      if until == f"stage{i + 1}":
        return None, feats
    feats["pooled"] = self.norm(x.mean((2, 3)))
    return self.head(feats["pooled"]).float(), feats


class _Attention(_Module):
  def __init__(self, dim, heads):
    super().__init__()
    self.heads = heads
    self.qkv = nn.Linear(dim, 3 * dim)
    self.proj = nn.Linear(dim, dim)

  def forward(self, x):
    b, t, d = x.shape
    q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
    y = F.scaled_dot_product_attention(q, k, v)
    return self.proj(y.transpose(1, 2).reshape(b, t, d))


class _EncoderBlock(_Module):
  def __init__(self, dim, heads):
    super().__init__()
    self.norm1 = nn.LayerNorm(dim, eps=1e-6)
    self.attn = _Attention(dim, heads)
    self.norm2 = nn.LayerNorm(dim, eps=1e-6)
    self.fc1 = nn.Linear(dim, 4 * dim)
    self.fc2 = nn.Linear(4 * dim, dim)

  def forward(self, x):
    x = x + self.attn(self.norm1(x))
    return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class ViT(_Module):
  """models/vit.py (dropout 0): no class token; stages are the token grids after each quarter
  of the blocks (the last after the final LayerNorm), returned as NCHW maps."""

  def __init__(self, dim, depth, heads, *, num_classes, image_size):
    super().__init__()
    p = 16 if image_size > SMALL_IMAGE else 4
    self.grid = image_size // p
    self.stage_ends = tuple(depth * k // 4 for k in (1, 2, 3, 4))
    self.patch_embed = nn.Conv2d(3, dim, p, stride=p)
    self.pos_embed = nn.Parameter(torch.randn(1, self.grid ** 2, dim) * 0.02)
    self.blocks = nn.ModuleList([_EncoderBlock(dim, heads) for _ in range(depth)])
    self.norm = nn.LayerNorm(dim, eps=1e-6)
    self.head = nn.Linear(dim, num_classes)

  def forward(self, x, until: str | None = None):
    x = self.patch_embed(x)
    n, d, h, w = x.shape
    x = x.flatten(2).transpose(1, 2) + self.pos_embed

    def grid(t):
      return t.reshape(n, h, w, d).permute(0, 3, 1, 2)

    feats = {}
    for i, blk in enumerate(self.blocks):
      x = blk(x)
      if i + 1 in self.stage_ends[:3]:
        level = f"stage{self.stage_ends.index(i + 1) + 1}"
        feats[level] = grid(x)
        if until == level:
          return None, feats
    x = self.norm(x)
    feats["stage4"] = grid(x)
    feats["pooled"] = x.mean(1)
    return self.head(feats["pooled"]).float(), feats


_RESNETS = {"resnet18": ("basic", (2, 2, 2, 2)), "resnet34": ("basic", (3, 4, 6, 3)),
            "resnet50": ("bottleneck", (3, 4, 6, 3))}
_CONVNEXTS = {"convnext_atto": ((2, 2, 6, 2), (40, 80, 160, 320)),
              "convnext_tiny": ((3, 3, 9, 3), (96, 192, 384, 768))}
_VITS = {"vit_ti": (192, 12, 3), "vit_s": (384, 12, 6)}
MODELS = (*_RESNETS, *_CONVNEXTS, *_VITS)


def build_model(name: str, *, width: float, num_classes: int, image_size: int):
  """Model `name` of our zoo at its default options but `width`, on the current device."""
  if name in _RESNETS:
    kind, sizes = _RESNETS[name]
    block = _BasicBlock if kind == "basic" else _Bottleneck
    return ResNet(block, sizes, num_classes=num_classes, image_size=image_size, width=width)
  if name in _CONVNEXTS:
    depths, dims = _CONVNEXTS[name]
    return ConvNeXt(depths, [scaled(d, width) for d in dims], num_classes=num_classes,
                    image_size=image_size)
  if name in _VITS:
    dim, depth, heads = _VITS[name]
    return ViT(scaled(dim, width), depth, max(1, round(heads * width)),
               num_classes=num_classes, image_size=image_size)
  raise ValueError(f"unknown model {name!r}; the PyTorch reference has: {', '.join(MODELS)}")


def level_shapes(name: str, *, width: float, num_classes: int, image_size: int
                 ) -> dict[str, tuple[int, ...]]:
  """`{level: (H, W, C) or (D,)}` as modelfn.level_shapes gives ours, traced on the meta device
  (no memory, no compute)."""
  with torch.device("meta"):
    model = build_model(name, width=width, num_classes=num_classes, image_size=image_size)
    _, feats = model.eval()(torch.zeros(1, 3, image_size, image_size))
  return {k: tuple(v.shape[2:]) + (v.shape[1],) if v.ndim == 4 else tuple(v.shape[1:])
          for k, v in feats.items()}


def param_count(model: str, width: float, num_classes: int, image_size: int) -> int:
  """Trainable parameters of `model` (BatchNorm statistics excluded, as in ours)."""
  with torch.device("meta"):
    m = build_model(model, width=width, num_classes=num_classes, image_size=image_size)
  return sum(p.numel() for p in m.parameters())


# The joint teacher's trainable part ----------------------------------------------------------
def _resize(x, hw):
  """functional.resize_map: bilinear to `hw`, identity when already there. Ours antialiases when
  shrinking; the paper's code calls F.interpolate without it (never reached here)."""
  if tuple(x.shape[2:]) == tuple(hw):
    return x
  return F.interpolate(x, size=tuple(hw), mode="bilinear", align_corners=False, antialias=False)


class _Emit(_Module):
  def __init__(self, c, relu):
    super().__init__()
    self.bn = nn.BatchNorm2d(c)
    self.relu = relu

  def forward(self, x):
    x = self.bn(x)
    return F.relu(x) if self.relu else x


class _Down(_Module):
  def __init__(self, cin, cout, stride, relu):
    super().__init__()
    # Padding 1 both sides; ours is 'SAME' (XLA pads (0, 1) at stride 2 on even sizes).
    self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
    self.bn1 = nn.BatchNorm2d(cout)
    self.conv2 = nn.Conv2d(cout, cout, 1, bias=False)
    self.emit = _Emit(cout, relu)

  def forward(self, x):
    x = F.gelu(self.bn1(self.conv1(x)), approximate="tanh")  # nnx.gelu is the tanh form
    return self.emit(self.conv2(x))


class _Adaptor(_Module):
  def __init__(self, cin, cout):
    super().__init__()
    self.bn = nn.BatchNorm2d(cin)
    self.conv = nn.Conv2d(cin, cout, 1)

  def forward(self, x):
    return self.conv(self.bn(x))


class FusionHead(_Module):
  """models/fusion.py: teachers' maps at `fusion_level` -> maps shaped like the reference
  student's at that level and every deeper one, its dense level, one logit head per dataset."""

  def __init__(self, *, teacher_widths: Sequence[int], fusion_level: str,
               target_shapes: dict[str, tuple[int, ...]], target_model: str,
               num_classes: Sequence[int], width: int, dropout: float):
    super().__init__()
    space = feature_space(target_model)
    relu = space.activation == "relu"
    self.fusion_level = fusion_level
    self.map_levels = MAP_LEVELS[MAP_LEVELS.index(fusion_level):]
    self.target_shapes = dict(target_shapes)
    self.adaptors = nn.ModuleList([_Adaptor(c, width) for c in teacher_widths])
    first = self.target_shapes[fusion_level][-1]
    self.merge = nn.Conv2d(width * len(teacher_widths), first, 1, bias=False)
    self.merge_emit = _Emit(first, relu)
    downs = []
    for prev, level in zip(self.map_levels, self.map_levels[1:]):
      (h0, _, c0), (h1, _, c1) = self.target_shapes[prev], self.target_shapes[level]
      downs.append(_Down(c0, c1, max(1, round(h0 / h1)), relu))
    self.downs = nn.ModuleList(downs)
    last = self.target_shapes[self.map_levels[-1]][-1]
    self.pool_norm = nn.LayerNorm(last, eps=1e-6) if space.pooled == "mean_layernorm" else None
    self.dropout = nn.Dropout(dropout)
    self.heads = nn.ModuleList([nn.Linear(last, n) for n in num_classes])

  def forward(self, teacher_maps, head: int | None = None):
    """(float32 logits of every head, or of `head` alone; fused levels)."""
    grid = self.target_shapes[self.fusion_level][:2]
    adapted = [_resize(a(m), grid) for a, m in zip(self.adaptors, teacher_maps)]
    x = self.merge_emit(self.merge(torch.cat(adapted, 1)))
    feats = {self.fusion_level: x}
    for level, down in zip(self.map_levels[1:], self.downs):
      x = _resize(down(x), self.target_shapes[level][:2])
      feats[level] = x
    pooled = x.mean((2, 3))
    if self.pool_norm is not None:
      pooled = self.pool_norm(pooled)
    feats["pooled"] = pooled
    h = self.dropout(pooled)
    heads = self.heads if head is None else [self.heads[head]]
    return [lin(h).float() for lin in heads], feats


def build_fusion(model: str, *, width: float, num_classes: int, image_size: int,
                 num_teachers: int, fusion_level: str, joint_width: int,
                 dropout: float = JOINT_DROPOUT) -> FusionHead:
  """The joint teacher over `num_teachers` teachers of `model`, shaped like a `model` student."""
  shapes = level_shapes(model, width=width, num_classes=num_classes, image_size=image_size)
  if fusion_level not in MAP_LEVELS:
    raise ValueError(f"fusion_level {fusion_level!r}; valid: {', '.join(MAP_LEVELS)}")
  return FusionHead(teacher_widths=[shapes[fusion_level][-1]] * num_teachers,
                    fusion_level=fusion_level, target_shapes=shapes, target_model=model,
                    num_classes=[num_classes] * num_teachers, width=joint_width,
                    dropout=dropout)


# Losses (distill/losses.py) ------------------------------------------------------------------
def kd_kl(z_s, z_t, t: float = TEMPERATURE):
  """T^2 * KL(softmax(z_T/T) || softmax(z_S/T)), mean over rows."""
  return t * t * F.kl_div(F.log_softmax(z_s.float() / t, -1), F.log_softmax(z_t.float() / t, -1),
                          reduction="batchmean", log_target=True)


def multihead_ce(logits_per_head, labels, dataset_ids, label_smoothing: float):
  """Each sample's cross-entropy on its own dataset's head, summed over the batch / its size."""
  total = 0.0
  for k, logits in enumerate(logits_per_head):
    mine = dataset_ids == k
    per_row = F.cross_entropy(logits.float(), torch.where(mine, labels, 0), reduction="none",
                              label_smoothing=label_smoothing)
    total = total + (per_row * mine).sum()
  return total / labels.shape[0]


def mlfd_loss(student, teacher, labels, levels: Sequence[str]):
  """w_kd * KD + w_feat * sum of per-level MSEs + w_ce * CE (no label smoothing)."""
  (z_s, f_s), (z_t, f_t) = student, teacher
  loss = W_KD * kd_kl(z_s, z_t) + W_CE * F.cross_entropy(z_s.float(), labels)
  if levels:
    loss = loss + W_FEAT * sum(F.mse_loss(f_s[l].float(), f_t[l].float()) for l in levels)
  return loss


# Steps ---------------------------------------------------------------------------------------
class Augment:
  """augment.augment + normalize on device: per-image crop of the zero-padded uint8 batch, a
  random horizontal flip (one gather), then float (x/255 - mean) / std as an NCHW tensor."""

  def __init__(self, image_size: int, device, memory_format, pad: int = PAD):
    self.pad, self.memory_format = pad, memory_format
    self.steps = torch.arange(image_size, device=device)
    self.mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
    self.std = torch.tensor(STD, device=device).view(1, 3, 1, 1)

  def normalize(self, images):
    """uint8 [B, H, W, C] -> float32 [B, C, H, W] in `memory_format`."""
    x = images.permute(0, 3, 1, 2).float().div_(255.0)
    return ((x - self.mean) / self.std).contiguous(memory_format=self.memory_format)

  def __call__(self, images):
    b, p = images.shape[0], self.pad
    padded = F.pad(images, (0, 0, p, p, p, p))
    offsets = torch.randint(0, 2 * p + 1, (b, 2), device=images.device)
    rows = offsets[:, :1] + self.steps
    cols = offsets[:, 1:] + self.steps
    flip = torch.rand(b, device=images.device) < 0.5
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    index = torch.arange(b, device=images.device)[:, None, None]
    return self.normalize(padded[index, rows[:, :, None], cols[:, None, :]])


def _decay_groups(module, weight_decay: float):
  """optim._decay_mask: weight decay on matrices and kernels, not on vectors."""
  params = [p for p in module.parameters() if p.requires_grad]
  return [{"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
          {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]


def _sgd(module):
  c = dict(SGD)
  return torch.optim.SGD(_decay_groups(module, c.pop("weight_decay")), **c)


def _adamw(module):
  c = dict(ADAMW)
  return torch.optim.AdamW(_decay_groups(module, c.pop("weight_decay")), **c)


def _freeze(module):
  module.eval()
  for p in module.parameters():
    p.requires_grad_(False)
  return module


@dataclasses.dataclass
class Reference:
  """What `make_steps` builds: each stage's trained module, the frozen ones, the steps."""

  trained: dict[str, object]   # stage -> the module its step trains (eval: the one it runs)
  frozen: list[object]         # the stage-1 teachers and the frozen joint teacher
  steps: dict[str, Callable[[], None]]


def build(*, model: str, width: float, batch: int, image_size: int, num_teachers: int,
          num_classes: int, dtype: str, device: str, fusion_level: str = "stage3",
          joint_width: int = 64, threads: int = 0, seed: int = 0) -> Reference:
  """Every stage's modules and step on one fixed random batch (see make_steps)."""
  if not available():
    raise RuntimeError("torch is not installed")
  if dtype not in ("float32", "bfloat16"):
    raise ValueError(f"dtype {dtype!r}; valid: float32, bfloat16")
  if device not in ("cpu", "cuda"):
    raise ValueError(f"device {device!r}; valid: cpu, cuda")
  if device == "cuda" and not torch.cuda.is_available():
    raise RuntimeError("device='cuda' but torch sees no CUDA device")
  if model not in MODELS:
    raise ValueError(f"unknown model {model!r}; the PyTorch reference has: {', '.join(MODELS)}")
  if threads > 0:
    torch.set_num_threads(threads)
  torch.manual_seed(seed)
  dev = torch.device(device)
  fmt = torch.channels_last if device == "cpu" else torch.contiguous_format
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

  def autocast():
    return torch.autocast(device_type=device, dtype=torch.bfloat16,
                          enabled=dtype == "bfloat16")

  def place(m):
    return m.to(dev, memory_format=fmt)

  def backbone():
    return place(build_model(model, width=width, num_classes=num_classes,
                             image_size=image_size))

  def fusion():
    return place(build_fusion(model, width=width, num_classes=num_classes,
                              image_size=image_size, num_teachers=num_teachers,
                              fusion_level=fusion_level, joint_width=joint_width))

  teacher, joint, frozen_joint = backbone(), fusion(), _freeze(fusion())
  teachers = [_freeze(backbone()) for _ in range(num_teachers)]
  student_mlfd, student_kd, student_eval = backbone(), backbone(), _freeze(backbone())
  levels = frozen_joint.map_levels + ("pooled",)
  opt = {"teacher": _sgd(teacher), "joint": _adamw(joint),
         "student_mlfd": _sgd(student_mlfd), "student_kd": _sgd(student_kd)}

  images = torch.randint(0, 256, (batch, image_size, image_size, 3), dtype=torch.uint8,
                         device=dev)
  labels = torch.randint(0, num_classes, (batch,), device=dev)
  dataset_ids = torch.randint(0, num_teachers, (batch,), device=dev)
  augment = Augment(image_size, dev, fmt)

  def teacher_maps(x):
    # Only up to the fusion level, and only head 0 of the frozen joint teacher below: what is
    # left of ours once XLA drops the outputs nothing reads.
    with torch.no_grad():
      return [t(x, until=fusion_level)[1][fusion_level] for t in teachers]

  def update(stage, loss):
    opt[stage].zero_grad(set_to_none=True)
    loss.backward()
    opt[stage].step()
    sync()

  def teacher_step():
    x = augment(images)
    with autocast():
      loss = F.cross_entropy(teacher(x)[0], labels, label_smoothing=LABEL_SMOOTHING)
    update("teacher", loss)

  def joint_step():
    x = augment(images)
    with autocast():
      logits, _ = joint(teacher_maps(x))
      loss = multihead_ce(logits, labels, dataset_ids, LABEL_SMOOTHING)
    update("joint", loss)

  def student_step(stage, student, distilled):
    def step():
      x = augment(images)
      with autocast():
        with torch.no_grad():
          z_t, f_t = frozen_joint(teacher_maps(x), head=0)
        loss = mlfd_loss(student(x), (z_t[0], f_t), labels, distilled)
      update(stage, loss)
    return step

  def eval_step():
    with torch.no_grad(), autocast():
      student_eval(augment.normalize(images))[0].argmax(-1)
    sync()

  return Reference(
      trained={"teacher": teacher, "joint": joint, "student_mlfd": student_mlfd,
               "student_kd": student_kd, "eval": student_eval},
      frozen=[*teachers, frozen_joint],
      steps={"teacher": teacher_step, "joint": joint_step,
             "student_mlfd": student_step("student_mlfd", student_mlfd, levels),
             "student_kd": student_step("student_kd", student_kd, ()),
             "eval": eval_step})


def make_steps(*, model: str, width: float, batch: int, image_size: int, num_teachers: int,
               num_classes: int, dtype: str, device: str, fusion_level: str = "stage3",
               joint_width: int = 64, threads: int = 0) -> dict[str, Callable[[], None]]:
  """{'teacher', 'joint', 'student_mlfd', 'student_kd', 'eval'} -> a callable running one
  complete step on a fixed device-resident uint8 NHWC batch of random data: augmentation,
  forward, backward and optimizer step for the training stages, an inference forward and argmax
  for `eval`. Each call synchronises the device before it returns, so the wall time around it
  is the step time.

  teacher: one `model` trained with CE (label smoothing 0.1), SGD. joint: `num_teachers` frozen
  teachers' `fusion_level` maps into a FusionHead (AdamW) with a head per dataset, each sample's
  CE on its own dataset's head. student_mlfd / student_kd: a `model` student (SGD) distilled from
  the frozen teachers + joint teacher, MLFD over every fused level / logits only. eval: the
  student's argmax. `dtype` bfloat16 is torch.autocast (float32 weights); `threads > 0` sets
  torch's intra-op threads.
  """
  return build(model=model, width=width, batch=batch, image_size=image_size,
               num_teachers=num_teachers, num_classes=num_classes, dtype=dtype, device=device,
               fusion_level=fusion_level, joint_width=joint_width, threads=threads).steps


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description="Median step time of each stage in the PyTorch "
                              "reference (a sanity check; benchmarks.throughput compares).")
  p.add_argument("--model", default="resnet18", choices=MODELS)
  p.add_argument("--width", type=float, default=0.125)
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--image_size", type=int, default=32)
  p.add_argument("--num_teachers", type=int, default=3)
  p.add_argument("--num_classes", type=int, default=10)
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
  p.add_argument("--fusion_level", default="stage3", choices=MAP_LEVELS)
  p.add_argument("--threads", type=int, default=0)
  a = p.parse_args(argv)
  steps = make_steps(model=a.model, width=a.width, batch=a.batch, image_size=a.image_size,
                     num_teachers=a.num_teachers, num_classes=a.num_classes, dtype=a.dtype,
                     device=a.device, fusion_level=a.fusion_level, threads=a.threads)
  print(f"torch {torch.__version__} {a.device} {a.dtype} threads={torch.get_num_threads()} "
        f"{a.model} width={a.width} batch={a.batch} {a.image_size}px")
  for stage, step in steps.items():
    step()  # warm-up: allocator, autotuning, lazy inits
    times = []
    for _ in range(a.steps):
      t0 = time.perf_counter()
      step()
      times.append(time.perf_counter() - t0)
    ms = statistics.median(times) * 1e3
    print(f"{stage:13s} {ms:9.2f} ms/step  {a.batch / ms * 1e3:9.1f} img/s")


if __name__ == "__main__":
  main()
