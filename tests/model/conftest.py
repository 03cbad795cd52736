import pytest
import torch

from liftplus.model import TINY_MODEL, load_backbone


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Every test here runs on one torch thread (see tests/conftest.py)."""


@pytest.fixture(scope="session")
def images() -> torch.Tensor:
    generator = torch.Generator().manual_seed(123)
    return torch.randn(4, 3, 32, 32, generator=generator)


@pytest.fixture(scope="session")
def reference_features():
    """open_clip's own VisionTransformer.forward with the projection removed: the frozen feature."""
    backbones = {}

    def compute(images: torch.Tensor, seed: int = 0) -> torch.Tensor:
        if seed not in backbones:
            backbone, _ = load_backbone(TINY_MODEL, None, seed=seed)
            backbone.eval()
            backbone.visual.proj = None
            backbones[seed] = backbone
        with torch.no_grad():
            return backbones[seed].visual(images)

    return compute


@pytest.fixture
def perturb():
    """Move every trainable tensor away from its init so a test can see it act."""

    def apply(model, seed: int = 7, std: float = 0.05) -> None:
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.trainable_parameters():
                p.add_(torch.randn(p.shape, generator=generator) * std)

    return apply
