"""The U-Net on its own: shapes, the zero-initialised output, and the label conditioning that
classifier-free guidance relies on."""
import pytest
import torch

from diffusion.config import DiffusionConfig
from diffusion.ddpm import DDPM
from diffusion.pipeline import make_denoiser
from models.unet import UNet
from training.batches import Batches
from utils.config import ModelConfig
from utils.datasets import Data

SMALL = dict(base_channels=8, channel_mults=(1, 2), attention_resolutions=(14,), norm_groups=4, num_heads=2)


def perturbed(model, scale=0.05):
    """The model with every parameter nudged, so that zero-initialised layers pass signal."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
    return model


@pytest.mark.parametrize("config", [ModelConfig(), ModelConfig(num_classes=0), ModelConfig(**SMALL),
                                    ModelConfig(base_channels=32, channel_mults=(1, 2, 2))])
def test_output_has_the_input_shape_and_is_zero_at_initialisation(config):
    torch.manual_seed(0)
    model = UNet(config)
    x, t = torch.randn(3, 1, 28, 28), torch.tensor([0, 500, 999])
    out = model(x, t, torch.tensor([1, 2, 3]) if config.num_classes else None)
    assert out.shape == x.shape
    assert torch.count_nonzero(out) == 0  # the output conv starts at zero: the first loss is E[target^2]


def test_the_default_network_is_the_documented_one():
    config = ModelConfig()
    assert (config.num_classes, config.base_channels, config.channel_mults, config.attention_resolutions) == (10, 16, (1, 2, 4), (7,))
    assert sum(p.numel() for p in UNet(config).parameters()) == 717_633


def test_the_label_changes_the_output_and_the_null_label_is_the_unconditional_one():
    torch.manual_seed(0)
    model = perturbed(UNet(ModelConfig(**SMALL))).eval()
    x, t = torch.randn(4, 1, 28, 28), torch.full((4,), 300)
    threes, sevens = model(x, t, torch.full((4,), 3)), model(x, t, torch.full((4,), 7))
    assert not torch.allclose(threes, sevens, atol=1e-4)
    null = torch.full((4,), model.config.num_classes)
    assert torch.equal(model(x, t, None), model(x, t, null))
    # what the samplers pass for "unconditional" in classifier-free guidance is this same null label
    seen = []
    model.register_forward_hook(lambda module, inputs, output: seen.append(inputs[2]))
    make_denoiser(model, DDPM(DiffusionConfig()), torch.full((4,), 3), guidance=1.0)(x, 300)
    assert seen[0][4:].tolist() == null.tolist()


def test_label_dropout_in_training_uses_the_null_label(mnist_dir):
    from utils.config import TrainConfig
    from utils.mnist import load_mnist
    images, labels = load_mnist(mnist_dir, train=True)
    cfg = TrainConfig(batch_size=256, p_uncond=0.5, epochs=1)
    batches = Batches(Data(images.unsqueeze(1), labels, ()), cfg, rank=0, world_size=1,
                      process=DDPM(DiffusionConfig()), null_label=ModelConfig().null_label)
    _, y, _, _ = batches.get(0)
    dropped = y == 10
    assert 0.3 < dropped.float().mean() < 0.7 and y[~dropped].max() <= 9


def test_the_forward_pass_makes_no_tensor_from_host_data(monkeypatch):
    """A CUDA graph cannot capture a copy from the host: VDM's Fourier features once built their
    frequencies with torch.tensor in forward, and `--process vdm --fourier_features 7 8` crashed in
    the capture of train.py's default CUDA-graph step. The frequencies are a buffer now, outside
    the state dict, so checkpoints are unchanged."""
    torch.manual_seed(0)
    model = UNet(ModelConfig(**SMALL, fourier_features=(7, 8)))
    x, t, y = torch.rand(2, 1, 28, 28) * 2 - 1, torch.tensor([3, 700]), torch.tensor([1, 10])
    expected = model(x, t, y)

    def no_host_tensor(*args, **kwargs):
        raise AssertionError("torch.tensor called in forward")

    monkeypatch.setattr(torch, "tensor", no_host_tensor)
    assert torch.equal(model(x, t, y), expected)
    assert "fourier_freqs" not in model.state_dict()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attention_samples_by_the_cpu_flash_kernel_trains_by_the_math_path_and_both_are_the_softmax(dtype):
    """Without gradients q, k and v reach scaled_dot_product_attention dense, so the CPU takes its flash
    kernel (the faster forward); with them, the strided views keep the math path (the faster backward,
    docs/NOTEBOOK.md). Either way the result is softmax(q k^T / sqrt(d)) v."""
    from models.blocks import AttentionBlock
    block = AttentionBlock(32, 2, 8).eval()
    torch.nn.init.normal_(block.proj.weight)
    x = torch.randn(3, 32, 7, 7, generator=torch.Generator().manual_seed(0))
    flash = "aten::_scaled_dot_product_flash_attention_for_cpu"
    outs = []
    for grad in (False, True):
        with torch.set_grad_enabled(grad), torch.autocast("cpu", dtype, enabled=dtype != torch.float32):
            with torch.profiler.profile() as prof:
                outs.append(block(x).float().detach())
        assert (flash in {event.name for event in prof.events()}) == (not grad)
    with torch.no_grad(), torch.autocast("cpu", dtype, enabled=dtype != torch.float32):
        q, k, v = (a.float().reshape(3, 2, 16, 49).transpose(2, 3) for a in block.qkv(block.norm(x)).chunk(3, dim=1))
    attended = torch.softmax(q @ k.transpose(2, 3) / 4, dim=-1) @ v
    expected = x + block.proj(attended.transpose(2, 3).reshape(3, 32, 7, 7)).detach()
    tolerance = 1e-5 if dtype == torch.float32 else 1e-2  # bf16: 1.8e-3 measured
    for out in outs:
        torch.testing.assert_close(out, expected, rtol=0, atol=tolerance * expected.abs().max().item())
