# %%
#| default_exp models

# %% [markdown]
# # models
#
# > The networks of Sections 5.2-5.4 by name: FCN and LeNet, the pytorchcv CIFAR models of Table 2, ImageNet ResNets and ViT-S/32 of Table 3

# %% [markdown]
# Section 5.2 trains a fully connected network (two hidden layers of 500 units, ReLU) on MNIST and a
# LeNet on CIFAR-10. Table 2 uses "standard implementations ... encapsulated in a Pytorch package",
# pytorchcv: ResNet-20, ResNet-56, ResNeXt-29-32x4d, WRN-28-10 and PyramidNet-110. Table 3 trains
# ResNet-50/101/152 and ViT-S/32 on ImageNet-1k (the paper used timm; we use torchvision's
# implementations of the same architectures, so no extra dependency is needed). A CIFAR-style
# ResNet-18 (3x3 stem, no max-pool) serves the loss-landscape figures. `get_model` builds any of them
# from its name, freshly initialised (never pretrained).

# %%
#| hide
from fastcore.test import *

# %%
#| export
import torch
from torch import nn


# %%
#| export
class FCN(nn.Sequential):
    """Fully connected network of Section 5.2: flatten, two hidden layers of `hidden` units with ReLU, linear output."""
    def __init__(self, num_classes=10, in_channels=1, image_size=28, hidden=500):
        super().__init__(nn.Flatten(), nn.Linear(in_channels * image_size * image_size, hidden), nn.ReLU(),
                         nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


# %%
test_eq(FCN()(torch.randn(4, 1, 28, 28)).shape, (4, 10))
test_eq(sum(p.numel() for p in FCN().parameters()), 784 * 500 + 500 + 500 * 500 + 500 + 500 * 10 + 10)


# %% [markdown]
# LeNet (LeCun et al., 1998): two 5x5 convolutions with 6 and 16 channels, each followed by ReLU and
# 2x2 max-pooling, then fully connected layers of 120 and 84 units. On 28x28 inputs the first
# convolution pads by 2, as in the original, so MNIST and CIFAR-10 both reach a 16x5x5 feature map.
# Smaller images are padded to 32x32 the same way: the 8x8 digits (`stablesam.data`, dataset `digits`)
# are padded by 12. The FCN takes any size (its input layer has `in_channels * image_size**2` units).

# %%
#| export
class LeNet(nn.Module):
    """LeNet-5 with ReLU and max-pooling, for 28x28 or 32x32 inputs."""
    def __init__(self, num_classes=10, in_channels=3, image_size=32):
        super().__init__()
        pad = max(0, (32 - image_size) // 2)
        self.features = nn.Sequential(nn.Conv2d(in_channels, 6, 5, padding=pad), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
        with torch.no_grad(): n = self.features(torch.zeros(1, in_channels, image_size, image_size)).shape[1]
        self.classifier = nn.Sequential(nn.Linear(n, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                                        nn.Linear(84, num_classes))
    def forward(self, x): return self.classifier(self.features(x))


# %%
test_eq(LeNet()(torch.randn(2, 3, 32, 32)).shape, (2, 10))
test_eq(LeNet(in_channels=1, image_size=28).classifier[0].in_features, 16 * 5 * 5)

# %% [markdown]
# ## By name
#
# The CIFAR models come from pytorchcv, which has a CIFAR-10 and a CIFAR-100 version of each (they
# differ only in the output layer); for another number of classes (a fake dataset, say) the CIFAR-10
# version gets a new output layer. PyramidNet-110 is pytorchcv's `pyramidnet110_a48` (widening
# factor 48, whose plain-SGD accuracy matches the paper's SGD column).

# %%
#| export
_PYTORCHCV = {'resnet20': 'resnet20', 'resnet56': 'resnet56', 'resnext29_32x4d': 'resnext29_32x4d',
              'wrn28_10': 'wrn28_10', 'pyramidnet110': 'pyramidnet110_a48'}
MODELS = ('fcn', 'lenet', *_PYTORCHCV, 'resnet18', 'resnet50', 'resnet101', 'resnet152', 'vit_s32')

def _pytorchcv(name, num_classes, in_channels):
    from pytorchcv.model_provider import get_model as cv_model
    model = cv_model(f"{_PYTORCHCV[name]}_cifar{100 if num_classes == 100 else 10}", pretrained=False,
                     in_channels=in_channels)
    if num_classes not in (10, 100): model.output = nn.Linear(model.output.in_features, num_classes)
    return model

def _torchvision_resnet(name, num_classes, in_channels, cifar_stem):
    import torchvision
    model = getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
    if cifar_stem:
        model.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
    return model

def vit_s32(num_classes=1000, image_size=224):
    """ViT-S/32: torchvision's VisionTransformer with patch 32, 12 layers, 6 heads, width 384, MLP 1536."""
    from torchvision.models.vision_transformer import VisionTransformer
    if image_size % 32: raise ValueError(f"Invalid image_size for ViT-S/32: {image_size} (must be a multiple of 32)")
    return VisionTransformer(image_size=image_size, patch_size=32, num_layers=12, num_heads=6, hidden_dim=384,
                             mlp_dim=1536, num_classes=num_classes)

def get_model(name, num_classes, in_channels=3, image_size=32):
    """A freshly initialised model `name` (one of `MODELS`) for `num_classes` classes."""
    if name not in MODELS: raise ValueError(f"Unknown model: {name!r} (choose from {', '.join(MODELS)})")
    if int(num_classes) != num_classes or num_classes < 2: raise ValueError(f"Invalid num_classes: {num_classes}")
    if name == 'fcn': return FCN(num_classes, in_channels, image_size)
    if name == 'lenet': return LeNet(num_classes, in_channels, image_size)
    if name in _PYTORCHCV: return _pytorchcv(name, num_classes, in_channels)
    if name == 'vit_s32':
        if in_channels != 3: raise ValueError(f"Invalid in_channels for vit_s32: {in_channels} (RGB only)")
        return vit_s32(num_classes, image_size)
    return _torchvision_resnet(name, num_classes, in_channels, cifar_stem=name == 'resnet18')


# %%
def n_params(m): return sum(p.numel() for p in m.parameters())
test_eq(n_params(get_model('resnet20', 10)), 272_474)
test_eq(get_model('resnet56', 100)(torch.randn(2, 3, 32, 32)).shape, (2, 100))
test_eq(get_model('resnet20', 3)(torch.randn(2, 3, 32, 32)).shape, (2, 3))
test_eq(get_model('resnet18', 10)(torch.randn(2, 3, 32, 32)).shape, (2, 10))
test_eq(get_model('lenet', 10, 1, 8)(torch.randn(2, 1, 8, 8)).shape, (2, 10))
test_eq(get_model('fcn', 10, 1, 8)[1].in_features, 64)
test_fail(lambda: get_model('resnet21', 10), contains='choose from fcn, lenet, resnet20')
test_fail(lambda: get_model('fcn', 0), contains='Invalid num_classes: 0')

# %% [markdown]
# ViT-S/32 as in Table 3: 12 layers of width 384 with 6 heads and an MLP of 1536, on 32x32 patches
# (49 patches and a class token at 224 pixels); about 22.9M parameters with a 1000-class head.

# %%
vit = get_model('vit_s32', 1000, image_size=224)
test_eq((len(vit.encoder.layers), vit.hidden_dim, vit.patch_size, vit.encoder.layers[0].self_attention.num_heads),
        (12, 384, 32, 6))
test_eq(vit.encoder.layers[0].mlp[0].out_features, 1536)
test_eq(vit.encoder.pos_embedding.shape, (1, 50, 384))
print(f'ViT-S/32: {n_params(vit) / 1e6:.1f}M parameters')

# %% [markdown]
# The sizes of all models (the large ones are only built here, never trained, in CI):

# %%
#| slow
for name in MODELS:
    imagenet = name in ('resnet50', 'resnet101', 'resnet152', 'vit_s32')
    nc, ch, size = {'fcn': (10, 1, 28)}.get(name, (1000, 3, 224) if imagenet else (10, 3, 32))
    print(f'{name:16s} {n_params(get_model(name, nc, ch, size)) / 1e6:7.2f}M')
